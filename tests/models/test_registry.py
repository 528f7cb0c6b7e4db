"""The registry: every model file's ``SPEC``, plus entry points in ``msaflow.models``.

The toy model proves "adding a model means adding one file": one module, written to a temporary
folder outside the project, registered through a real ``importlib.metadata.EntryPoint`` (only the
lookup of the installed entry points is replaced), then ``run``, ``tune`` and ``reproduce`` run on
it with nothing else changed.
"""

from __future__ import annotations

import textwrap
from importlib.metadata import EntryPoint

import pytest
from mlflow.tracking import MlflowClient

from msaflow import models
from msaflow.errors import ConfigError

TOY = '''
"""A toy model: a per-modality masked mean, weighted, into one linear head."""

from dataclasses import dataclass

import torch
from torch import nn

from msaflow.models.base import InputSpec, ModelOutput, ModelSpec, MSAModel, task_loss
from msaflow.models.spec import Cell, Citation, PaperTable, ParamSpec, TableSpec, TraceFamily


@dataclass
class ToyConfig(InputSpec):
    gain: float = 1.0  # the one tuned parameter
    use_audio: bool = True


class Toy(MSAModel):
    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.cfg = cfg
        self.mods = ("text", "audio") if cfg.use_audio else ("text",)
        self.proj = nn.ModuleDict({m: nn.Linear(getattr(cfg, f"{m}_dim"), 1) for m in self.mods})

    def forward(self, batch):
        pred = 0.0
        for m in self.mods:
            x = batch[m]  # (B, T, d)
            mask = (torch.arange(x.shape[1])[None, :] < batch[f"{m}_len"][:, None]).float()
            pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
            pred = pred + self.cfg.gain * self.proj[m](pooled).squeeze(-1)
        return ModelOutput(pred=pred)

    def loss(self, out, batch):
        total = task_loss(out.pred, batch, self.cfg.head)
        return total, {"loss/task": float(total.detach()), "loss/total": float(total.detach())}

    def on_epoch_end(self, epoch):
        return {f"toy/wnorm_{m[0]}": float(self.proj[m].weight.detach().norm()) for m in self.mods}


TOY_PAPER = PaperTable(
    key="toy-paper",
    citation=Citation(title="A toy", authors="Nobody", venue="nowhere", source="this test"),
    table="Table 1",
    caption="Toy results.",
    results={"CMU-MOSI": {"both": {"mae": 1.0}, "text": {"mae": 1.2}}},
    row_labels={"both": "text + audio", "text": "text only"},
)

SPEC = ModelSpec(
    name="toy",
    config_cls=ToyConfig,
    model_cls=Toy,
    variants={"both": {}, "text": {"use_audio": False}},
    presets={"quick": {"model": {}, "train": {"epochs": 1, "batch_size": 32, "lr": 1e-2}}},
    default_variant="both",
    search_space={"gain": ParamSpec(0.5, 2.0)},
    traces=(
        TraceFamily(
            name="toy",
            x="epoch",
            panels={"weight norm": "toy/wnorm_{m}"},
            file="plots/toy.png",
            over=("t", "a"),
        ),
    ),
    tables={
        "toy-table": TableSpec(
            model="toy",
            cells=(Cell("both", "both"), Cell("text", "text")),
            baseline="both",
            reference=TOY_PAPER,
            description="The toy with and without audio.",
        )
    },
)
'''


def _install(monkeypatch: pytest.MonkeyPatch, folder, module: str, values: list[str]) -> None:
    """Write the toy module, then let ``registry()`` see ``values`` as the installed entry
    points of ``msaflow.models``, loaded by the same code path as a real installed package."""
    (folder / f"{module}.py").write_text(textwrap.dedent(TOY))
    monkeypatch.syspath_prepend(str(folder))
    installed = [
        EntryPoint(name=f"toy{i}", value=v, group="msaflow.models") for i, v in enumerate(values)
    ]

    def entry_points(group: str):
        return [ep for ep in installed if ep.group == group]

    monkeypatch.setattr(models, "entry_points", entry_points)
    models.registry.cache_clear()


@pytest.fixture
def toy(tmp_path, monkeypatch):
    _install(monkeypatch, tmp_path, "msaflow_toy_model", ["msaflow_toy_model:SPEC"])
    yield models.get_spec("toy")
    monkeypatch.undo()
    models.registry.cache_clear()  # the next lookup forgets the toy


def test_the_package_models_are_found_by_their_files():
    assert {"mmafnet", "mmcl", "unimodal", "earlyfusion"} <= set(models.registry())
    assert models.registry() is models.registry(), "discovered once, then cached"
    assert {"mmafnet-table2", "mmafnet-table3", "mmafnet-sgd-lr", "mmcl-table1", "unimodal"} <= set(
        models.tables()
    )
    table1 = models.paper_tables()["mmafnet-table1"]  # the comparison table: a cell per model
    assert table1.results["CMU-MOSI"]["misa"]["acc2_non0"] == 83.4
    assert table1.others["MFM"]["CMU-MOSI"]["acc2_non0"] == 81.7  # not a model of ours
    assert "mmafnet-table1" in models.tables()


def test_a_toy_model_from_an_entry_point_shows_up_everywhere(toy):
    from msaflow.tasks.checks import TABLES, get_table
    from msaflow.tasks.paper_results import PAPER_TABLES, paper_table
    from msaflow.tasks.tuning import SPACES, load_search_space

    assert toy.name == "toy" and "mmafnet" in models.registry()
    assert get_table("toy-table").model == "toy" and "toy-table" in TABLES
    assert paper_table("toy-paper").value("CMU-MOSI", "text", "mae") == 1.2
    assert "toy-paper" in PAPER_TABLES and set(SPACES["toy"]) == {"gain"}
    assert set(load_search_space("toy")) == {"gain"}


def test_two_models_of_one_name_are_a_clear_error(tmp_path, monkeypatch):
    _install(monkeypatch, tmp_path, "msaflow_toy_twice", ["msaflow_toy_twice:SPEC"] * 2)
    try:
        with pytest.raises(ConfigError, match="a second model named 'toy'"):
            models.registry()
    finally:
        monkeypatch.undo()
        models.registry.cache_clear()


def test_a_name_that_is_no_spec_is_refused():
    with pytest.raises(ConfigError, match="expected a models.ModelSpec"):
        models.add_spec({}, object(), "entry point x = y:z")
    table = models.get_spec("mmcl").tables["mmcl-table1"]
    wrong = models.ModelSpec(
        name="other",
        config_cls=object,
        model_cls=object,
        variants={},
        presets={},
        tables={"t": table},
    )
    with pytest.raises(ConfigError, match="a table belongs to its model's SPEC"):
        models.add_spec({}, wrong, "msaflow.models.other.SPEC")


def test_run_tune_and_reproduce_a_toy_model(toy, tiny_sim, tmp_path, prefect_harness):
    from msaflow.flows.pipeline import pipeline
    from msaflow.flows.reproduce import reproduce
    from msaflow.flows.tune import tune
    from msaflow.tasks.config import load_overrides_file

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)

    ran = pipeline(
        data=str(tiny_sim),
        model="toy",
        variants=["both"],
        seeds=[1],
        experiment="toy-run",
        tracking_uri=uri,
    )
    assert not ran["failures"] and [r["cell"] for r in ran["rows"]] == ["both"]
    child = client.get_run(ran["rows"][0]["run_id"])
    assert "test/mae" in child.data.metrics and "toy/wnorm_a" in child.data.metrics
    artifacts = {a.path for a in client.list_artifacts(child.info.run_id, "plots")}
    assert "plots/toy.png" in artifacts, "the toy's own trace family, drawn"

    tuned = tune(
        model="toy",
        data=str(tiny_sim),
        epochs=1,
        n_trials=2,
        storage=f"sqlite:///{tmp_path / 'optuna.db'}",
        sampler="random",
        tracking_uri=uri,
        experiment="toy-tune",
        eval_seeds=[],
        out=str(tmp_path / "best.yaml"),
    )
    assert tuned["finished"] == 2
    assert set(load_overrides_file(tuned["best_path"])["model"]) == {"gain"}

    out = tmp_path / "report" / "report.md"
    repro = reproduce(
        "toy-table",
        data=str(tiny_sim),
        seeds=1,
        tracking_uri=uri,
        experiment="toy-repro",
        out=str(out),
        max_workers=1,
    )
    assert not repro["failures"] and sorted(r["cell"] for r in repro["rows"]) == ["both", "text"]
    md = out.read_text()
    assert "paper (CMU-MOSI)" in md and "| both | text + audio | mae |" in md
    assert (out.parent / "traces_toy.png").is_file()
