import math

import numpy as np
import pytest

from tasks.metrics import depression_metrics, emotion_metrics, metric_fn, pearson, sentiment_metrics


def test_sentiment_hand_computed():
    pred = np.array([1.0, -1.0, 0.4, 2.6, -0.2])
    label = np.array([1.2, 0.5, 0.0, 3.0, -0.4])
    m = sentiment_metrics(pred, label)
    # has0: pred>=0 [T,F,T,T,F] vs label>=0 [T,T,T,T,F] -> 4/5
    assert m["acc2_has0"] == pytest.approx(0.8)
    # non0 (labels 1.2, 0.5, 3.0, -0.4): pred>0 [T,F,T,F] vs label>0 [T,T,T,F] -> 3/4
    assert m["acc2_non0"] == pytest.approx(0.75)
    # weighted F1 on non0: positives (3): tp=2, fp=0, fn=1 -> f1=0.8; negatives (1): tp=1, fp=1 -> 2/3
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
    # class h: truth [T,F,F,F] pred [T,F,F,T] -> acc 3/4, f1 = 2/3
    assert m["acc_h"] == pytest.approx(0.75) and m["f1_h"] == pytest.approx(2 / 3)
    # class s: truth [F,T,T,F] pred [F,T,F,F] -> acc 3/4, f1 = 2/3
    assert m["acc_s"] == pytest.approx(0.75) and m["f1_s"] == pytest.approx(2 / 3)
    # class a: truth [F,F,F,T] pred [F,F,T,F] -> acc 2/4, f1 0
    assert m["acc_a"] == pytest.approx(0.5) and m["f1_a"] == 0.0
    assert m["acc_avg"] == pytest.approx((0.75 + 0.75 + 0.5) / 3)


def test_depression_threshold_and_errors():
    pred = np.array([3.0, 12.0, 9.0, 20.0])
    label = np.array([2.0, 14.0, 10.0, 18.0])
    m = depression_metrics(pred, label)
    assert m["mae"] == pytest.approx(1.5)
    assert m["rmse"] == pytest.approx(math.sqrt((1 + 4 + 1 + 4) / 4))
    # depressed = score > 9: truth [F,T,T,T], pred [F,T,F,T] -> precision 1, recall 2/3
    assert m["precision"] == 1.0 and m["recall"] == pytest.approx(2 / 3) and m["f1"] == pytest.approx(0.8)


def test_metric_fn_unknown_task():
    with pytest.raises(ValueError, match="unknown task"):
        metric_fn("translation")
