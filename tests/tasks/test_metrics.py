import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from msaflow.tasks.metrics import (
    DEFAULT_SELECTION,
    depression_metrics,
    emotion_metrics,
    metric_fn,
    metric_names,
    pearson,
    selection_mode,
    sentiment_metrics,
)


def test_sentiment_hand_computed():
    pred = np.array([1.0, -1.0, 0.4, 2.6, -0.2])
    label = np.array([1.2, 0.5, 0.0, 3.0, -0.4])
    m = sentiment_metrics(pred, label)
    # has0: pred>=0 [T,F,T,T,F] vs label>=0 [T,T,T,T,F] -> 4/5
    assert m["acc2_has0"] == pytest.approx(0.8)
    # non0 (labels 1.2, 0.5, 3.0, -0.4): pred>0 [T,F,T,F] vs label>0 [T,T,T,F] -> 3/4
    assert m["acc2_non0"] == pytest.approx(0.75)
    # weighted F1 on non0: positives (3): tp=2, fp=0, fn=1 -> f1=0.8; negatives (1): tp=1, fp=1
    # -> 2/3
    assert m["f1_non0"] == pytest.approx((3 * 0.8 + 1 * (2 / 3)) / 4)
    # acc7: round(clip) pred [1,-1,0,3,-0] vs label [1,0,0,3,-0] -> 4/5
    assert m["acc7"] == pytest.approx(0.8)
    # acc5: clip to [-2,2]: pred [1,-1,0,2,-0] vs label [1,0,0,2,-0] -> 4/5
    assert m["acc5"] == pytest.approx(0.8)
    assert m["mae"] == pytest.approx(np.mean([0.2, 1.5, 0.4, 0.4, 0.2]))
    assert m["corr"] == pytest.approx(np.corrcoef(pred, label)[0, 1])


def test_rounding_is_half_to_even_like_mmsa():
    # 2.5 rounds to 2 and 0.5 to 0 under np.round, as MMSA compares them.
    m = sentiment_metrics(np.array([2.5, 0.5]), np.array([2.0, 0.0]))
    assert m["acc7"] == 1.0


def test_constant_prediction_corr_is_nan_not_crash():
    m = sentiment_metrics(np.zeros(4), np.array([1.0, -1.0, 2.0, 0.5]))
    assert math.isnan(m["corr"])
    assert math.isnan(pearson([1, 1], [1, 2]))


def test_all_zero_labels_non0_is_nan():
    m = sentiment_metrics(np.array([0.3, -0.2]), np.zeros(2))
    assert math.isnan(m["acc2_non0"]) and m["acc2_has0"] == 0.5


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="equal length"):
        sentiment_metrics([1.0, 2.0], [1.0])


def test_emotion_per_class_one_vs_rest():
    logits = np.eye(3)[[0, 1, 2, 0]]
    label = np.array([0, 1, 1, 2])
    m = emotion_metrics(logits, label, ["h", "s", "a"])
    assert m["acc"] == pytest.approx(0.5)
    # class h: truth [T,F,F,F] pred [T,F,F,T] -> acc 3/4; positive F1 2/3; negative F1 (tp 2, fp 0,
    # fn 1) 4/5; MulT weighted = (1 * 2/3 + 3 * 4/5) / 4
    assert m["acc_h"] == pytest.approx(0.75) and m["f1pos_h"] == pytest.approx(2 / 3)
    assert m["f1_h"] == pytest.approx((2 / 3 + 3 * 0.8) / 4)
    # class s: truth [F,T,T,F] pred [F,T,F,F] -> acc 3/4; positive 2/3; negative (tp 2, fn 0, fp 1)
    # 4/5
    assert m["acc_s"] == pytest.approx(0.75) and m["f1pos_s"] == pytest.approx(2 / 3)
    assert m["f1_s"] == pytest.approx((2 * (2 / 3) + 2 * 0.8) / 4)
    # class a: truth [F,F,F,T] pred [F,F,T,F] -> acc 2/4; positive 0; negative (tp 2, fp 1, fn 1)
    # 2/3
    assert m["acc_a"] == pytest.approx(0.5) and m["f1pos_a"] == 0.0
    assert m["f1_a"] == pytest.approx(3 * (2 / 3) / 4)
    assert m["acc_avg"] == pytest.approx((0.75 + 0.75 + 0.5) / 3)
    assert m["f1_avg"] == pytest.approx(np.mean([m["f1_h"], m["f1_s"], m["f1_a"]]))


# 100 utterances, 4 classes, 77 correct (rows = truth, columns = prediction): the example.
CONFUSION_77 = np.array([[17, 1, 2, 1], [2, 23, 0, 1], [2, 3, 19, 0], [2, 5, 4, 18]])


def _from_confusion(conf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    truth = np.repeat(np.arange(4), conf.sum(1))
    pred = np.concatenate([np.repeat(np.arange(4), row) for row in conf])
    return truth, pred


def test_emotion_f1_follows_mults_eval_iemocap():
    """f1_<emo> is MulT's ``f1_score(test_truth_i, test_preds_i, average='weighted')`` per
    emotion."""
    truth, pred = _from_confusion(CONFUSION_77)
    names = ["neutral", "happy", "sad", "angry"]
    m = emotion_metrics(np.eye(4)[pred], truth, names)
    assert m["acc"] == pytest.approx(0.77)
    # Independently, as MulT's eval_iemocap: per emotion, 0/1 truth and argmax of a 2-way
    # prediction.
    mult_f1, mult_acc, positive_f1 = [], [], []
    for i, name in enumerate(names):
        truth_i, preds_i = (truth == i).astype(int), (pred == i).astype(int)
        mult_f1.append(f1_score(truth_i, preds_i, average="weighted"))
        mult_acc.append(accuracy_score(truth_i, preds_i))
        positive_f1.append(f1_score(truth_i, preds_i))
        assert m[f"f1_{name}"] == pytest.approx(mult_f1[-1])
        assert m[f"acc_{name}"] == pytest.approx(mult_acc[-1])
        assert m[f"f1pos_{name}"] == pytest.approx(positive_f1[-1])
    assert m["f1_avg"] == pytest.approx(np.mean(mult_f1)) and round(m["f1_avg"], 3) == 0.884
    assert m["acc_avg"] == pytest.approx(np.mean(mult_acc))
    # The old figure (positive-class F1 averaged) understated it: 0.769, and it is f1_macro.
    assert round(float(np.mean(positive_f1)), 3) == 0.769
    assert m["f1_macro"] == pytest.approx(np.mean(positive_f1))
    assert m["f1_weighted"] == pytest.approx(f1_score(truth, pred, average="weighted"))


def test_emotion_keeps_one_of_f1_avg_and_f1_macro():
    m = emotion_metrics(np.eye(4)[[0, 1, 2, 3, 0]], np.array([0, 1, 2, 2, 3]), ["n", "h", "s", "a"])
    assert "f1pos_avg" not in m and m["f1_avg"] != m["f1_macro"]
    assert set(m) == {"acc", "f1_weighted", "f1_macro", "acc_avg", "f1_avg"} | {
        f"{k}_{c}" for k in ("acc", "f1", "f1pos") for c in "nhsa"
    }


def _mmsa_metrics_top(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """MMSA 2.2 ``MetricsTop.__eval_mosei_regression``, restated without rounding to 4 places."""
    p7, t7 = np.clip(pred, -3.0, 3.0), np.clip(truth, -3.0, 3.0)
    p5, t5 = np.clip(pred, -2.0, 2.0), np.clip(truth, -2.0, 2.0)
    non_zeros = np.array([i for i, e in enumerate(truth) if e != 0])
    return {
        "acc2_has0": accuracy_score(pred >= 0, truth >= 0),
        "f1_has0": f1_score(truth >= 0, pred >= 0, average="weighted"),
        "acc2_non0": accuracy_score(pred[non_zeros] > 0, truth[non_zeros] > 0),
        "f1_non0": f1_score(truth[non_zeros] > 0, pred[non_zeros] > 0, average="weighted"),
        "acc5": np.sum(np.round(p5) == np.round(t5)) / float(len(t5)),
        "acc7": np.sum(np.round(p7) == np.round(t7)) / float(len(t7)),
        "mae": np.mean(np.absolute(pred - truth)),
        "corr": np.corrcoef(pred, truth)[0][1],
    }


def test_sentiment_matches_mmsa_definitions():
    rng = np.random.default_rng(0)
    # MOSI-like labels on the 1/3 grid with exact zeros, predictions with ties at 0 and at .5,
    # and values past +-3 (clipped for Acc7/Acc5, not for MAE).
    label = np.round(rng.uniform(-3, 3, 300) * 3) / 3
    label[:30] = 0.0
    pred = np.concatenate(
        [rng.normal(0, 2, 260), [0.0] * 10, [0.5, -0.5, 1.5, -2.5, 2.5] * 4, [4.0, -5.0] * 5]
    )
    ours, mmsa = sentiment_metrics(pred, label), _mmsa_metrics_top(pred, label)
    assert set(ours) == set(mmsa)
    for key, value in mmsa.items():
        assert ours[key] == pytest.approx(value, abs=1e-12), key


def test_acc7_rounds_half_to_even_after_clipping_and_mae_is_unclipped():
    # 3.5 clips to 3 (matches label 3; unclipped it would round to 4); -2.5 rounds to -2 (half to
    # even, not away from zero); 0.5 rounds to 0.
    pred, label = np.array([3.5, -2.5, 0.5, 5.0]), np.array([3.0, -2.0, 0.0, 3.0])
    m = sentiment_metrics(pred, label)
    assert m["acc7"] == 1.0
    assert m["acc5"] == 1.0  # clipped to [-2, 2]: 2 vs 2, -2 vs -2, 0 vs 0, 2 vs 2
    assert m["mae"] == pytest.approx((0.5 + 0.5 + 0.5 + 2.0) / 4)
    assert m["corr"] == pytest.approx(np.corrcoef(pred, label)[0, 1])


def test_depression_threshold_against_an_independent_count():
    """Depressed means PHQ-9 > 9 (>= 10 on integer scores); a score of exactly 9 is not."""
    rng = np.random.default_rng(1)
    label = rng.integers(0, 28, 200).astype(float)
    label[:5] = 9.0
    pred = np.clip(label + rng.normal(0, 3, 200), 0, 27)
    pred[:3] = [9.0, 9.0001, 8.9999]
    m = depression_metrics(pred, label)
    yt = [y >= 10 for y in label]  # integer labels: > 9 is >= 10
    yp = [p > 9 for p in pred]
    tp = sum(t and p for t, p in zip(yt, yp, strict=True))
    fp = sum(p and not t for t, p in zip(yt, yp, strict=True))
    fn = sum(t and not p for t, p in zip(yt, yp, strict=True))
    assert m["precision"] == pytest.approx(tp / (tp + fp))
    assert m["recall"] == pytest.approx(tp / (tp + fn))
    assert m["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert m["mae"] == pytest.approx(np.mean(np.abs(pred - label)))
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean((pred - label) ** 2)))
    assert m["corr"] == pytest.approx(np.corrcoef(pred, label)[0, 1])


def test_default_selection_is_computed_by_each_task_with_its_direction():
    for task, (metric, mode) in DEFAULT_SELECTION.items():
        assert metric.removeprefix("valid/") in metric_names(
            task, ["neutral", "happy", "sad", "angry"]
        )
        assert selection_mode(metric) == mode
    assert DEFAULT_SELECTION["emotion"] == ("valid/f1_weighted", "max")
    assert selection_mode("valid/loss") == selection_mode("valid/rmse") == "min"
    assert selection_mode("valid/acc7") == selection_mode("valid/corr") == "max"


def test_depression_threshold_and_errors():
    pred = np.array([3.0, 12.0, 9.0, 20.0])
    label = np.array([2.0, 14.0, 10.0, 18.0])
    m = depression_metrics(pred, label)
    assert m["mae"] == pytest.approx(1.5)
    assert m["rmse"] == pytest.approx(math.sqrt((1 + 4 + 1 + 4) / 4))
    # depressed = score > 9: truth [F,T,T,T], pred [F,T,F,T] -> precision 1, recall 2/3
    assert (
        m["precision"] == 1.0
        and m["recall"] == pytest.approx(2 / 3)
        and m["f1"] == pytest.approx(0.8)
    )


def test_metric_fn_unknown_task():
    with pytest.raises(ValueError, match="unknown task"):
        metric_fn("translation")
