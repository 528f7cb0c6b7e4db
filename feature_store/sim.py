"""The simulation benchmark: MOSI/MOSEI-shaped stores with a planted modality imbalance.

Ground truth per utterance (sentiment profiles): the label ``y`` is drawn from CMU-MOSI's label
distribution; a complementary part ``w ~ N(0, sigma_w^2)`` is drawn independently and the shared
part is ``u = y - w``. Every modality sees ``u``; only audio and vision see ``w``:

- text observes ``u`` at high signal-to-noise,
- audio and vision observe ``u`` at low SNR and ``w`` at moderate SNR (independent noises).

So text alone learns fast and dominates joint training (the situation MMAFNet's SGM/IPR address),
while the best achievable score needs the weak modalities. Observations enter word-aligned
(T, d) sequences as per-word jittered projections on fixed random directions, on top of a
per-video nuisance offset and frame noise; frames past an utterance's length are zero.

The emotion profile (``iemocap``) plants valence as the shared channel and arousal as the
audio/vision-only channel; ``cmdc`` plants a subject-level PHQ-9 score the same way as sentiment.

The parameters below are fixed in code, were set before any model was trained on them and must not
be tuned to make a model win. The manifest records them and an oracle: a least-squares fit (with
quadratic terms) of the label on the latent per-modality observations, estimated by Monte Carlo
(50k fit + 50k held-out draws, about +-0.005) --
an upper bound for models that recover those observations from the sequences.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from msaflow.errors import DataError
from msaflow.feature_store.datatypes import Manifest, SplitData, read_manifest
from msaflow.feature_store.parquet_io import write_dataset
from msaflow.feature_store.store_safety import check_target
from msaflow.modalities import MODALITIES

# CMU-MOSI label shares per Acc7 bin (round(clip(y, -3, 3))), computed from the 2195 utterances of
# ../shared/data/mosi_label.csv (CMU-MOSI labels via jiangbing22/MMCPanda data/mosi/label.csv).
MOSI_ACC7_SHARES = {-3: 0.0364, -2: 0.1745, -1: 0.1841, 0: 0.1831, 1: 0.1727, 2: 0.2105, 3: 0.0387}
MOSI_ZERO_SHARE = 96 / 2195  # labels exactly 0 in the same file (they count for Acc2 has0 only)
# IEMOCAP 4-class (happy merged with excited) class counts 1708/1636/1084/1103 as commonly reported
# for the 5531-utterance setting; split sizes 2717/798/938 as in MulT's IEMOCAP release.
IEMOCAP_CLASSES = ["neutral", "happy", "sad", "angry"]
IEMOCAP_SHARES = np.array([1708, 1636, 1084, 1103]) / 5531
IEMOCAP_VALENCE = np.array([0.0, 1.0, -1.0, -1.0])
IEMOCAP_AROUSAL = np.array([-0.5, 0.5, -1.0, 1.0])


@dataclass(frozen=True)
class SimProfile:
    name: str
    data_kind: str
    counts: tuple[int, int, int]  # train, valid, test utterances
    dims: tuple[int, int, int] = (768, 74, 35)  # text, audio, vision -- as the MMAFNet paper states
    seq_len: int = 50
    sigma_w: float = 0.7  # complementary part, seen only by audio and vision
    text_noise: float = 0.15  # text's noise on u (high SNR)
    weak_u_noise: float = 1.2  # audio/vision noise on u (low SNR)
    weak_w_noise: float = 0.6  # audio/vision noise on w
    word_jitter: float = 0.5  # per-word jitter of the observation (averages out over words)
    signal_norm: tuple[float, float, float] = (3.0, 1.0, 1.0)  # length of each signal direction
    frame_noise: float = 1.0  # i.i.d. per feature and frame
    speaker_noise: float = 0.5  # per-video offset: nuisance every modality carries
    mean_words: float = 11.0  # utterance length ~ lognormal around this, clipped to [2, seq_len]
    clips_per_video: int = 24
    subjects: int = 0  # cmdc: number of subjects (12 utterances each)
    extra: dict = field(default_factory=dict)


SIM_PROFILES: dict[str, SimProfile] = {
    "mosi": SimProfile("mosi", "sentiment", (1284, 229, 686)),
    "mosei": SimProfile("mosei", "sentiment", (16326, 1871, 4659)),
    "iemocap": SimProfile(
        "iemocap",
        "emotion",
        (2717, 798, 938),
        sigma_w=0.0,
        text_noise=0.25,
        weak_u_noise=1.5,
        weak_w_noise=0.5,
    ),
    "cmdc": SimProfile("cmdc", "depression", (0, 0, 0), subjects=78, sigma_w=0.7),
}
CHUNK = 1024  # rows generated per RNG stream: fixed, so output never depends on memory settings


def _sample_sentiment(rng: np.random.Generator, n: int) -> np.ndarray:
    bins = np.array(list(MOSI_ACC7_SHARES))
    shares = np.array(list(MOSI_ACC7_SHARES.values()))
    b = rng.choice(bins, size=n, p=shares / shares.sum())
    y = b + rng.uniform(-0.5, 0.5, size=n)
    # carve the exact zeros out of the neutral bin, as in MOSI
    zero = (b == 0) & (rng.random(n) < MOSI_ZERO_SHARE / MOSI_ACC7_SHARES[0])
    y = np.where(zero, 0.0, np.clip(np.round(y, 1), -3.0, 3.0)) + 0.0  # no -0.0
    return y.astype(np.float32)


def _latents(p: SimProfile, rng: np.random.Generator, n: int, label=None):
    """Label, shared channel u, complementary channel w (and class ids for emotion)."""
    if p.data_kind == "emotion":
        cls = rng.choice(len(IEMOCAP_CLASSES), size=n, p=IEMOCAP_SHARES)
        return cls.astype(np.float32), IEMOCAP_VALENCE[cls], IEMOCAP_AROUSAL[cls], cls
    if p.data_kind == "depression":
        z = (label - 9.0) / 6.0  # standardised PHQ-9
    else:
        z = _sample_sentiment(rng, n) if label is None else label
    w = rng.normal(0.0, p.sigma_w, size=n)
    u = z - w
    y = z if p.data_kind == "sentiment" else label
    return np.asarray(y, np.float32), u, w, None


def _observe(
    p: SimProfile, rng: np.random.Generator, u: np.ndarray, w: np.ndarray
) -> dict[str, np.ndarray]:
    """Utterance-level latent observations per modality: text (n, 1), audio/vision (n, 2)."""
    n = len(u)
    obs = {"text": (u + rng.normal(0, p.text_noise, n))[:, None]}
    for m in ("audio", "vision"):
        obs[m] = np.stack(
            [u + rng.normal(0, p.weak_u_noise, n), w + rng.normal(0, p.weak_w_noise, n)], 1
        )
    return obs


def _directions(p: SimProfile, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([seed, 7])
    out = {}
    for m, d, k, norm in zip(MODALITIES, p.dims, (1, 2, 2), p.signal_norm, strict=True):
        a = rng.standard_normal((k, d))
        q, _ = np.linalg.qr(a.T)  # orthonormal directions, (d, k)
        out[m] = (q.T * norm).astype(np.float32)  # (k, d)
    return out


def _sequences(
    p: SimProfile,
    rng: np.random.Generator,
    obs: dict[str, np.ndarray],
    lengths: np.ndarray,
    speaker: dict[str, np.ndarray],
    dirs: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    n, t = len(lengths), p.seq_len
    valid = (np.arange(t)[None, :] < lengths[:, None]).astype(np.float32)  # (n, T)
    out = {}
    for m, d in zip(MODALITIES, p.dims, strict=True):
        o = obs[m].astype(np.float32)  # (n, k)
        word = o[:, None, :] + p.word_jitter * rng.standard_normal(
            (n, t, o.shape[1]), dtype=np.float32
        )
        x = rng.standard_normal((n, t, d), dtype=np.float32)
        x *= p.frame_noise
        x += word @ dirs[m]  # (n, T, d)
        x += speaker[m][:, None, :]
        x *= valid[:, :, None]
        out[m] = x
    return out


def _generate_split(
    p: SimProfile,
    seed: int,
    split: str,
    n: int,
    dirs,
    labels=None,
    subjects=None,
    video_offset: int = 0,
) -> SplitData:
    feats: dict[str, list] = {m: [] for m in MODALITIES}
    ys, lens, cls_all = [], [], []
    split_no = ("train", "valid", "test").index(split)
    n_videos = max(1, -(-n // p.clips_per_video)) if subjects is None else int(subjects.max()) + 1
    vrng = np.random.default_rng([seed, 11, split_no])
    speaker_tab = {
        m: (p.speaker_noise * vrng.standard_normal((n_videos, d))).astype(np.float32)
        for m, d in zip(MODALITIES, p.dims, strict=True)
    }
    video_of = (np.arange(n) if subjects is None else subjects) // (
        p.clips_per_video if subjects is None else 1
    )
    for c, start in enumerate(range(0, n, CHUNK)):
        rng = np.random.default_rng([seed, 13, split_no, c])
        sl = slice(start, min(n, start + CHUNK))
        m_n = sl.stop - sl.start
        y, u, w, cls = _latents(p, rng, m_n, None if labels is None else labels[sl])
        obs = _observe(p, rng, u, w)
        length = np.clip(
            np.round(rng.lognormal(np.log(p.mean_words), 0.6, m_n)), 2, p.seq_len
        ).astype(np.int64)
        spk = {m: speaker_tab[m][video_of[sl] % n_videos] for m in speaker_tab}
        seqs = _sequences(p, rng, obs, length, spk, dirs)
        for m in feats:
            feats[m].append(seqs[m])
        ys.append(y)
        lens.append(length)
        if cls is not None:
            cls_all.append(cls)
    length = np.concatenate(lens)
    vid = video_of + video_offset
    if subjects is None:
        clip = np.arange(n) % p.clips_per_video + 1
    else:
        clip = np.concatenate([np.arange((subjects == s).sum()) + 1 for s in np.unique(subjects)])
    video_ids = np.array([f"sim{p.name}{v:05d}" for v in vid])
    return SplitData(
        ids=np.array([f"{v}$_${c}" for v, c in zip(video_ids, clip, strict=True)]),
        labels=np.concatenate(ys),
        features={m: np.concatenate(v) for m, v in feats.items()},
        lengths={m: length.copy() for m in feats},
        class_labels=np.concatenate(cls_all).astype(np.int64) if cls_all else None,
        video_ids=video_ids,
        clip_ids=clip.astype(str),
        subjects=None if subjects is None else np.array([f"subject{s:03d}" for s in vid]),
    )


def _cmdc_subjects(p: SimProfile, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """78 subjects, a third depressed (PHQ-9 >= 10); 12 utterances each; splits by subject
    60/20/20."""
    rng = np.random.default_rng([seed, 17])
    k = p.subjects
    depressed = rng.random(k) < 1 / 3
    phq = np.where(depressed, rng.integers(10, 28, k), rng.integers(0, 10, k)).astype(np.float32)
    order = rng.permutation(k)
    cut = [int(0.6 * k), int(0.8 * k)]
    groups = np.split(order, cut)
    out = {}
    for split, subj in zip(("train", "valid", "test"), groups, strict=True):
        subj = np.sort(subj)
        rows = np.repeat(subj, 12)
        out[split] = (rows, phq[rows])
    return out


def _oracle(p: SimProfile, seed: int, n: int = 50_000) -> dict[str, dict[str, float]]:
    """Best achievable MAE/Acc2 (or accuracy) per modality subset, given the latent observations."""
    rng = np.random.default_rng([seed, 23])
    labels = rng.integers(0, 28, 2 * n).astype(np.float32) if p.data_kind == "depression" else None
    y, u, w, cls = _latents(p, rng, 2 * n, labels)
    obs = _observe(p, rng, u, w)
    mean_len = p.mean_words
    # per-word jitter averages over the words of an utterance
    for m in obs:
        obs[m] = obs[m] + rng.normal(0, p.word_jitter / np.sqrt(mean_len), obs[m].shape)
    out = {}
    subsets = {
        "t": ["text"],
        "a": ["audio"],
        "v": ["vision"],
        "av": ["audio", "vision"],
        "tav": ["text", "audio", "vision"],
    }
    for key, mods in subsets.items():
        x = np.concatenate([obs[m] for m in mods], 1)
        feats = np.concatenate([np.ones((2 * n, 1)), x, x**2, np.abs(x)], 1)
        tr, te = slice(0, n), slice(n, 2 * n)
        if p.data_kind == "emotion":
            # one-vs-rest least squares on indicators, argmax: a linear oracle on the latents
            onehot = np.eye(len(IEMOCAP_CLASSES))[cls]
            coef, *_ = np.linalg.lstsq(feats[tr], onehot[tr], rcond=None)
            acc = float(((feats[te] @ coef).argmax(1) == cls[te]).mean())
            out[key] = {"acc": round(acc, 4)}
            continue
        coef, *_ = np.linalg.lstsq(feats[tr], y[tr], rcond=None)
        pred = feats[te] @ coef
        yt = y[te]
        entry = {"mae": round(float(np.abs(pred - yt).mean()), 4)}
        if p.data_kind == "sentiment":
            nz = yt != 0
            entry["acc2_non0"] = round(float(((pred[nz] > 0) == (yt[nz] > 0)).mean()), 4)
        out[key] = entry
    return out


def _scaled(n: int, scale: float) -> int:
    return n if scale == 1.0 else max(16, int(round(n * scale)))


def generator_config(profile: str, seed: int, scale: float) -> dict:
    p = SIM_PROFILES[profile]
    return {
        "generator": "msaflow.sim",
        "version": 1,
        "profile": profile,
        "seed": seed,
        "scale": scale,
        "params": asdict(p),
    }


def synthesize(
    profile: str, out_dir: str | Path, seed: int = 0, scale: float = 1.0, force: bool = False
) -> Manifest:
    """Write the ``sim-<profile>`` store; a no-op when ``out_dir`` already holds the same one.

    ``force``: write into a non-empty folder that is not a store (see ``write_dataset``)."""
    out = Path(out_dir)
    if profile not in SIM_PROFILES:
        raise DataError(out, "profile", f"one of {sorted(SIM_PROFILES)}, got {profile!r}")
    if not 0 < scale <= 1:
        raise DataError(out, "scale", f"a fraction in (0, 1], got {scale}")
    config = generator_config(profile, seed, scale)
    if (out / "manifest.json").is_file():
        try:
            existing = read_manifest(out)
            if existing.config == json.loads(json.dumps(config)) and all(
                (out / f["file"]).is_file() and (out / f["file"]).stat().st_size == f["bytes"]
                for f in existing.files.values()
            ):
                return existing
        except DataError:
            pass  # unreadable: regenerate (write_dataset decides whether it may replace it)
    check_target(out, force=force)  # refuse a user's folder before minutes of generation
    p = SIM_PROFILES[profile]
    dirs = _directions(p, seed)
    splits = {}
    if p.data_kind == "depression":
        groups = _cmdc_subjects(p, seed)
        if scale != 1.0:  # keep whole subjects
            groups = {
                s: (
                    r[: max(12, int(len(r) * scale) // 12 * 12)],
                    y[: max(12, int(len(y) * scale) // 12 * 12)],
                )
                for s, (r, y) in groups.items()
            }
        for split, (rows, phq) in groups.items():
            splits[split] = _generate_split(
                p, seed, split, len(rows), dirs, labels=phq, subjects=rows
            )
    else:
        offset = 0
        for split, n in zip(("train", "valid", "test"), p.counts, strict=True):
            splits[split] = _generate_split(
                p, seed, split, _scaled(n, scale), dirs, video_offset=offset
            )
            offset += 10_000
    kind = "classification" if p.data_kind == "emotion" else "regression"
    label_range = {"sentiment": (-3.0, 3.0), "emotion": (0.0, 3.0), "depression": (0.0, 27.0)}[
        p.data_kind
    ]
    source_sha = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    return write_dataset(
        out,
        splits,
        name=f"sim-{profile}" + ("" if scale == 1.0 else f"-x{scale:g}"),
        source="simulation",
        data_kind=p.data_kind,
        label_kind=kind,
        label_range=label_range,
        source_sha256=source_sha,
        config=config,
        num_classes=len(IEMOCAP_CLASSES) if kind == "classification" else 1,
        class_names=IEMOCAP_CLASSES if kind == "classification" else None,
        oracle=_oracle(p, seed),
        force=force,
    )
