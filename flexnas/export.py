"""Export a searched architecture as a standalone model, with a JSON model card beside it.

`export_subnet(run, arch=... | target=..., format="pt" | "torchscript" | "onnx")` extracts the arch's
path from the run's trained supernet (`Supernet.extract`), recalibrates its BatchNorm statistics on
training batches (the `SupernetEvaluator`'s path, so the exported net is exactly the one search
scored), scores it on the search-validation split, writes the model and checks the written file
against the PyTorch model at export time (TorchScript and ONNX/onnxruntime: max abs diff <= 1e-4).
The card records what a deployment needs to rebuild and trust the file: space and constructor
arguments, arch string, MACs, params, latency (and the table's device fingerprint), accuracy, data and
its normalisation, config hash and the check. `load(path)` rebuilds the PyTorch model from the card
(`space.subnet(arch)` + the saved state dict) without the supernet.

Files, for `out=DIR`: `DIR/model.pt` (state dict; the `pt` format itself), `DIR/model.torchscript.pt`
or `DIR/model.onnx`, and the card `DIR/model.<format>.json`.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import torch
from torch import nn

import flexnas
from flexnas.arch import Arch
from flexnas.errors import ArchError, CheckpointError, ConfigError, ExportError, did_you_mean
from flexnas.io import atomic_json

if TYPE_CHECKING:
    from flexnas.pipeline import Run
    from flexnas.spaces.base import SearchSpace

__all__ = ["FORMATS", "ExportResult", "export_subnet", "export_network", "load", "read_card"]

FORMATS = ("pt", "torchscript", "onnx")
CARD_VERSION = 1
TOLERANCE = 1e-4
DEFAULT_OPSET = 17
_MODEL_FILES = {"pt": "model.pt", "torchscript": "model.torchscript.pt", "onnx": "model.onnx"}
_WEIGHTS = "model.pt"

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class ExportResult:
    model_path: Path
    card_path: Path
    card: dict[str, Any]
    model: nn.Module  # the exported PyTorch network (eval mode, CPU)


# ---- choosing the arch --------------------------------------------------------------------------
def _decode(space: "SearchSpace", text: str, where: str) -> Arch:
    """Decode an arch string; when it fails, say if it is another space's arch."""
    try:
        return space.decode(text)
    except ArchError as exc:
        from flexnas import spaces

        name = spaces.owner_of(text, like=space)
        if name is not None:
            raise ArchError(f"'{_short(text)}' is a {name} arch, but {where} uses the {space.name} space; "
                            f"pass a {space.name} arch (e.g. `flexnas sample {space.name}`) or export "
                            f"from a {name} run") from None
        raise ArchError(f"{where}: not a {space.name} arch: {exc}") from None


def _short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def chosen_arch(run: "Run", target: str) -> str:
    """The arch a run's search chose for `target` (runs/<name>/chosen.json), any spelling of it."""
    from flexnas.search import Constraint

    chosen_file = run.dir / "chosen.json"
    if not chosen_file.is_file():
        raise ConfigError(f"{run.dir} has no chosen.json: search it first with "
                          f"`flexnas search {run.dir} --target '{target}'`")
    chosen = json.loads(chosen_file.read_text())
    want = str(Constraint.parse(target))
    for key, row in chosen.items():
        try:
            if str(Constraint.parse(key)) == want:
                return str(row["arch"])
        except ValueError:
            continue
    raise ConfigError(f"{run.dir} chose no arch for target '{target}'{did_you_mean(want, chosen)}; its targets: "
                      f"{', '.join(chosen) or 'none'} (search it with `flexnas search {run.dir} --target "
                      f"'{target}'`)")


# ---- writing and checking -----------------------------------------------------------------------
@contextlib.contextmanager
def _quiet_fds() -> Iterator[None]:
    """The TorchScript-based ONNX exporter prints whole IR graphs to fd 1/2 on failure; the error
    message we raise says what matters."""
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink:
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _onnx_opset_range() -> tuple[int, int]:
    from torch.onnx import _constants

    return _constants.ONNX_MIN_OPSET, getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET",
                                              _constants.ONNX_MAX_OPSET)


def _export_onnx(net: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    import warnings

    lo, hi = _onnx_opset_range()
    if not lo <= opset <= hi:
        raise ExportError(f"ONNX opset {opset} is outside what torch {torch.__version__} exports ({lo}..{hi}); "
                          f"use --opset {DEFAULT_OPSET}")

    def attempt(version: int, target: Path) -> None:
        with warnings.catch_warnings(), _quiet_fds():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (example,), str(target), opset_version=version, dynamo=False,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})

    try:
        attempt(opset, path)
    except Exception as exc:  # the exporter raises UnsupportedOperatorError, SymbolicValueError, ...
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        op = re.search(r"operator '([^']+)'", text)
        op_name = op.group(1) if op else "an operator of this network"
        # Name an opset that works: the one the exporter suggests, else the first that exports.
        hint = re.search(r"added in version (\d+)", text)
        candidates = ([int(hint.group(1))] if hint else []) + list(range(opset + 1, hi + 1))
        working = None
        with tempfile.TemporaryDirectory() as tmp:
            for version in dict.fromkeys(candidates):
                try:
                    attempt(version, Path(tmp) / "probe.onnx")
                except Exception:
                    continue
                working = version
                break
        fix = (f"re-export with --opset {working}" if working is not None
               else f"no opset up to {hi} can express it; use --format torchscript or pt")
        raise ExportError(f"ONNX opset {opset} cannot express {op_name} ({text}); {fix}") from None


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def _check(fmt: str, path: Path, reference: torch.Tensor, x: torch.Tensor) -> dict[str, Any]:
    """Run the written file with its own runtime and compare with the PyTorch model's output."""
    if fmt == "onnx":
        import onnx
        import onnxruntime as ort

        onnx.checker.check_model(onnx.load(str(path)))
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        out = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
        runtime = f"onnxruntime {ort.__version__}"
    elif fmt == "torchscript":
        scripted = torch.jit.load(str(path), map_location="cpu")
        with torch.no_grad():
            out = scripted(x)
        runtime = f"torch.jit {torch.__version__}"
    else:
        with torch.no_grad():
            out = load(path)(x)
        runtime = f"flexnas.load (torch {torch.__version__})"
    diff = _max_diff(out, reference)
    return {"runtime": runtime, "reference": "PyTorch eager model", "batch": int(x.shape[0]),
            "max_abs_diff": diff, "tolerance": TOLERANCE, "passed": diff <= TOLERANCE}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_json(path, data)


def export_network(net: nn.Module, card: dict[str, Any], format: str, out: PathLike, check_input: torch.Tensor,
                   opset: int = DEFAULT_OPSET) -> ExportResult:
    """Write `net` (a `space.subnet(arch)`-shaped network; `card` must hold `space` and `arch`) in
    `format` under `out`, check the file against `net` on `check_input`, then write the card."""
    if format not in FORMATS:
        raise ConfigError(f"unknown export format '{format}'{did_you_mean(format, FORMATS)}; "
                          f"use one of {', '.join(FORMATS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    net = net.to("cpu").eval()
    x = check_input.to("cpu", torch.float32)
    with torch.no_grad():
        reference = net(x)
    weights = out / _WEIGHTS
    model_path = out / _MODEL_FILES[format]
    card_path = out / f"model.{format}.json"
    torch.save(net.state_dict(), weights)
    # The trace/export example has another batch size than the check, so a batch size baked into the
    # file would fail the check.
    example = x[:1] if x.shape[0] > 1 else torch.cat([x, x])
    if format == "torchscript":
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(net, example)
        traced.save(str(model_path))
    elif format == "onnx":
        _export_onnx(net, example, model_path, opset)
    card = dict(card, format=format, flexnas_card=CARD_VERSION, flexnas_version=flexnas.__version__,
                torch_version=torch.__version__, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                input={"shape": [None, *x.shape[1:]], "dtype": "float32", **card.get("input", {})},
                files={"model": model_path.name, "weights": weights.name, "weights_sha256": _sha256(weights),
                       "model_sha256": _sha256(model_path)})
    if format == "onnx":
        card["onnx"] = {"opset": opset, "input": "input", "output": "logits", "dynamic_axes": ["batch"]}
    # The card is written before the check (load() reads it) and rewritten with the result.
    _write_json(card_path, dict(card, check=None))
    checks = {"reload": _check("pt", card_path, reference, x)}
    if format != "pt":
        checks[format] = _check(format, model_path, reference, x)
    card["check"] = checks[format if format != "pt" else "reload"]
    card["reload_check"] = checks["reload"]
    _write_json(card_path, card)
    failed = {k: v for k, v in checks.items() if not v["passed"]}
    if failed:
        what = "; ".join(f"{k}: max abs diff {v['max_abs_diff']:.3g} > {TOLERANCE:g}" for k, v in failed.items())
        raise ExportError(f"the exported {format} model does not reproduce PyTorch ({what}); the card "
                          f"{card_path} records the check. Try another --opset or --format pt")
    return ExportResult(model_path, card_path, card, net)


def export_subnet(run: Union["Run", PathLike], arch: Union[Arch, str, None] = None, *,
                  target: Optional[str] = None, format: str = "pt", out: Optional[PathLike] = None,
                  opset: int = DEFAULT_OPSET, check_batch: int = 8) -> ExportResult:
    """Export `arch` (an Arch or arch string) or the arch the run chose for `target` from a trained
    run folder: extracted supernet weights, BatchNorm recalibrated on training batches, checked."""
    from flexnas.config import config_hash, to_dict
    from flexnas.pipeline import Run

    if format not in FORMATS:
        raise ConfigError(f"unknown export format '{format}'{did_you_mean(format, FORMATS)}; "
                          f"use one of {', '.join(FORMATS)}")
    if (arch is None) == (target is None):
        raise ConfigError("export needs exactly one of an arch (--arch) or a search target (--target)")
    if not isinstance(run, Run):
        run = Run.open(run, progress=False)
    space = run.space
    where = f"run {run.dir}"
    if target is not None:
        arch = chosen_arch(run, target)
    if isinstance(arch, str):
        arch = _decode(space, arch, where)
    elif isinstance(arch, Arch) and arch.space != space.name:
        raise ArchError(f"the arch is from the {arch.space} space, but {where} uses the {space.name} space")
    else:
        space.validate(arch)  # type: ignore[arg-type]
    assert isinstance(arch, Arch)
    text = space.encode(arch)

    evaluator = run.evaluator()
    net = evaluator.path(arch)  # extracted + BN-recalibrated, eval mode
    scores = evaluator.evaluate(arch)
    costs = space.cost_model().cost(arch)
    slug = re.sub(r"[^A-Za-z0-9_.=-]+", "_", target) if target else hashlib.sha1(text.encode()).hexdigest()[:10]
    out = Path(out) if out is not None else run.dir / "export" / f"{space.name}-{slug}"
    check_input = torch.cat([x for x, _ in evaluator.val])[:check_batch]

    sc = run.cfg.space
    table = getattr(space.cost_model(), "latency_table", None)
    card: dict[str, Any] = {
        "space": {"name": space.name, "args": {"input_size": space.input_size, "num_classes": space.num_classes,
                                               "width_mult": space.width_mult, **sc.options}},
        "arch": text,
        "choices": list(arch.choices),
        "target": target,
        "macs": int(costs["macs"]),
        "params": int(costs["params"]),
        "latency_ms": float(costs["latency_ms"]) if "latency_ms" in costs else None,
        "latency_table": None if table is None else {"fingerprint_id": table.id, "fingerprint": table.fingerprint,
                                                     "path": table.where()},
        "accuracy": {"split": "search-val", "top1": scores["accuracy"], "loss": scores["loss"],
                     "images": evaluator.num_val},
        "bn_recalibration": {"batches": evaluator.bn_batches, "source": "supernet-training images"},
        "data": to_dict(run.cfg.data),
        "input": {"mean": list(run.data.mean), "std": list(run.data.std),
                  "preprocess": "x = (pixels / 255 - mean) / std, NCHW; 1-channel images repeated to 3"},
        "run": {"dir": str(run.dir), "name": run.cfg.name, "config_hash": config_hash(run.cfg),
                "checkpoint_sha256": _sha256(run.checkpoint_path)},
    }
    return export_network(net, card, format, out, check_input, opset)


# ---- loading ------------------------------------------------------------------------------------
def _is_card(path: Path) -> bool:
    if path.suffix != ".json" or not path.is_file():
        return False
    try:
        return "flexnas_card" in json.loads(path.read_text())
    except (OSError, ValueError, TypeError):
        return False


def _find_card(path: Path) -> Path:
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    if path.is_dir():
        cards = sorted(p for p in path.glob("*.json") if _is_card(p))
        if len(cards) == 1:
            return cards[0]
        if not cards:
            raise CheckpointError(f"{path} holds no model card (*.json written by `flexnas export`); "
                                  f"export a model with `flexnas export RUN --arch ARCH`")
        raise CheckpointError(f"{path} holds several model cards ({', '.join(p.name for p in cards)}); "
                              f"pass one of them")
    if path.suffix == ".json":
        if not _is_card(path):
            raise CheckpointError(f"{path} is not a flexnas model card (no 'flexnas_card' field)")
        return path
    # A model file: the card beside it that names it.
    for card in sorted(path.parent.glob("*.json")):
        if _is_card(card):
            files = json.loads(card.read_text()).get("files", {})
            if path.name in (files.get("model"), files.get("weights")):
                return card
    hint = "export the model with `flexnas export RUN --arch ARCH`, which writes the card beside it"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "supernet" in state:
            hint = (f"it is a supernet training checkpoint; export a subnet from its run folder with "
                    f"`flexnas export {path.parent} --arch ARCH` (or --target)")
    except Exception:
        pass
    raise CheckpointError(f"{path} has no model card beside it (a model.<format>.json naming it), so the "
                          f"network cannot be rebuilt; {hint}")


def read_card(path: PathLike) -> tuple[dict[str, Any], Path]:
    """The model card for a card, model file or export folder, and its path."""
    card_path = _find_card(Path(path))
    try:
        card = json.loads(card_path.read_text())
        card["space"]["name"], card["arch"], card["files"]["weights"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"model card {card_path} is malformed ({type(exc).__name__}: {exc}); "
                              f"export the model again") from None
    return card, card_path


def load(path: PathLike) -> nn.Module:
    """Rebuild an exported model from its card: `space.subnet(arch)` + the saved state dict (no
    supernet needed). Accepts the card, the model or weights file, or the export folder. The model
    is in eval mode and carries its card as `model.card`."""
    from flexnas import spaces

    card, card_path = read_card(path)
    weights = card_path.parent / card["files"]["weights"]
    if not weights.is_file():
        raise CheckpointError(f"model card {card_path} names weights {weights.name}, which are missing")
    want = card["files"].get("weights_sha256")
    if want and _sha256(weights) != want:
        raise CheckpointError(f"{weights} is not the file card {card_path} describes (sha256 differs); "
                              f"another export overwrote it: export again")
    space = spaces.get(card["space"]["name"], **card["space"].get("args", {}))
    arch = space.decode(card["arch"])
    net = space.subnet(arch)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{weights} does not fit {card['arch']} ({reason}); export again") from None
    net.eval()
    net.card = card  # type: ignore[assignment]
    return net
