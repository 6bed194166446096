"""Batch generation: a file of prompts in, one file of generations out (docs/batch.md).

    tokensampler batch prompts.jsonl -o out.jsonl --temperature 0.7 --seed 1
    tokensampler batch prompts.parquet -o out.parquet --ray --workers 4

>>> from tokensampler.batch import run  # doctest: +SKIP
>>> summary = run("prompts.jsonl", "out.jsonl", temperature=0.7, seed=1)  # doctest: +SKIP

Decisions (docs/batch.md has the long form):

- The output does not depend on how the work is spread: the file, sorted by id, is the same
  bytes for any worker count, batch size, thread count, partitioning or resume. Three things
  make that true. A record without a `seed` draws from seed = blake2b(run seed, id), never
  from its position. Batches are planned by the driver from the sorted ids (records that can
  share a generate call, in id order, `batch_size` at a time), never by the engine's
  partitioning. And the model runs in row-invariant mode (`DecoderLM.set_row_invariant`): a
  row's logits are bit-identical whatever its neighbours, so even the batch size does not
  change the text.
- The driver reads the input itself (JSONL line by line, or Parquet): ids from line numbers,
  a non-UTF-8 or non-JSON line, and duplicate ids need the whole file in order, which Ray's
  `read_json` cannot give (it fails the read on a bad line). Workers get planned batches;
  their results come back to the driver, which appends them to `OUT.partial` (JSONL, one
  flushed write per batch) on both paths, so that progress, `--resume` and the final sorted
  file are one code path.
- Nothing is lost: a bad record (bad line, bad id, duplicate id, empty prompt, a prompt that
  does not fit the context, an invalid sampling field) becomes an output record with
  `error`; every input id appears in the output exactly once.
- A `null` field is "not given" (the run default applies), so that JSONL and Parquet, where
  a missing column value is null, mean the same; a record switches a stage off with its off
  value (`top_p` 1, `top_k` 0).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from .generate import Generation
    from .model import DecoderLM, Tokenizer
    from .params import SamplingParams

__all__ = ["BatchSummary", "Settings", "Worker", "add_parser", "main", "plan_batches", "run"]

RecordId = int | str
Record = dict[str, Any]  # an output record, or a planned task
EXIT_USAGE = 2
EXTRA = 'pip install "tokensampler[batch]"'
DEFAULT_MAX_NEW_TOKENS = 64
DEFAULT_BATCH_SIZE = 8

# Fields of an input record besides the SamplingParams ones.
_RECORD_FIELDS = ("id", "prompt", "messages", "max_new_tokens", "seed", "stop", "logprobs")
# SamplingParams fields a record cannot set: the bitmask is not JSON, and generate has no
# top-n output to write.
_REFUSED = {
    "token_bitmask": "not supported per record (structured output is not part of batch yet)",
    "top_logprobs": "not supported: the output has the chosen tokens' logprobs only "
    "(give logprobs: true)",
}


def _field_sets() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(row fields, group fields) of SamplingParams: a generate call takes one value per row
    for the first; records that differ in the second go into different batches."""
    from .params import PARAM_NAMES, SamplingParams

    row = (*PARAM_NAMES, "logit_bias")
    skip = {*row, "seed", "logprobs", *_REFUSED}
    group = tuple(f.name for f in dataclasses.fields(SamplingParams) if f.name not in skip)
    return row, group


# ==============================================================================================
# settings, seeds, ids
# ==============================================================================================


@dataclass(frozen=True)
class Settings:
    """What decides the output of a run (and nothing that does not: batch size, workers and
    threads are left out, since they must not change it). Sent to every worker."""

    model: str | None = None
    device: str | None = None
    dtype: str | None = None
    chat: bool | None = None  # None: the chat template when the tokenizer has one
    system: str | None = None
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    seed: int = 0  # the run seed
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    logprobs: bool = False
    sampling: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # run defaults

    def fingerprint(self) -> str:
        """A digest of the settings, kept in `OUT.partial` so that `--resume` refuses to mix
        two runs' records."""
        text = json.dumps(dataclasses.asdict(self), sort_keys=True, default=repr)
        return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def record_seed(run_seed: int, record_id: RecordId) -> int:
    """The seed of a record that gives none: a 63-bit blake2b digest of the run seed and the
    id (its JSON, so that 7 and "7" differ), the same in every process and on every machine,
    unlike Python's salted `hash`."""
    key = f"{run_seed}\x00{json.dumps(record_id, ensure_ascii=False)}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def id_key(record_id: RecordId) -> tuple[int, int, str]:
    """Sort key of ids: integers by value, then strings by code point."""
    if isinstance(record_id, int):
        return (0, record_id, "")
    return (1, 0, record_id)


# ==============================================================================================
# reading the input: records -> tasks or error records
# ==============================================================================================


def _format(path: str, what: str) -> str:
    ext = path.lower().rsplit(".", 1)[-1] if "." in os.path.basename(path) else ""
    if ext in ("jsonl", "ndjson"):
        return "jsonl"
    if ext in ("parquet", "pq"):
        return "parquet"
    raise ValueError(f"{what} {path}: give a .jsonl or .parquet file")


def read_input(path: str) -> Iterator[tuple[int, Record | str]]:
    """(line or row number from 1, the record object or an error message) for every
    non-blank line of a JSONL file or row of a Parquet file."""
    if _format(path, "input") == "parquet":
        pq = _import_pyarrow_parquet()
        n = 0
        for rb in pq.ParquetFile(path).iter_batches(batch_size=4096):
            for row in rb.to_pylist():
                n += 1
                yield n, row
        return
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                yield n, f"line {n} is not valid UTF-8 ({e.reason} at byte {e.start})"
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                yield n, f"line {n} is not valid JSON: {e.msg} (column {e.colno})"
                continue
            yield n, obj if isinstance(obj, dict) else f"line {n} is not a JSON object"


def _convert(name: str, value: Any) -> Any:
    """A sampling field's JSON / Parquet value as SamplingParams takes it."""
    if name == "logit_bias":
        # JSON object keys are strings; a Parquet map arrives as (key, value) pairs.
        items = value.items() if isinstance(value, Mapping) else value
        try:
            return {int(k): float(v) for k, v in items}
        except (TypeError, ValueError):
            raise TypeError("logit_bias must map token ids to biases") from None
    if name == "sequence_bias" and isinstance(value, list):
        # Hugging Face's serialised form: [[ids, bias], ...]
        try:
            return {tuple(int(i) for i in ids): float(b) for ids, b in value}
        except (TypeError, ValueError):
            raise TypeError("sequence_bias must be a list of [token ids, bias] pairs") from None
    return value


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list of {role, content} objects")
    for m in messages:
        if not (
            isinstance(m, Mapping)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
        ):
            raise TypeError("every message must have a string role and a string content")
    if not any(m["content"].strip() for m in messages):
        raise ValueError("empty prompt: every message is empty")


def _utf8(rid: RecordId) -> bool:
    # A JSON string may hold a lone surrogate ("\ud800"), which no UTF-8 file can.
    try:
        str(rid).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_record(obj: Record, line: int, settings: Settings) -> Record:
    """A task (id, prompt or messages, its sampling fields, seed, ...) from an input record,
    or an error record ({"id", "error"}). Checks everything that needs no model; the worker
    checks the rest (the prompt's token count against the context)."""
    rid = obj.get("id")
    if rid is None:
        rid = line
    elif isinstance(rid, bool) or not isinstance(rid, (int, str)) or not _utf8(rid):
        return {"id": line, "error": f"line {line}: id must be an integer or a string"}
    row_fields, group_fields = _field_sets()
    given = {k: v for k, v in obj.items() if v is not None}
    try:
        unknown = sorted(set(given) - {*_RECORD_FIELDS, *row_fields, *group_fields, *_REFUSED})
        if unknown:
            raise ValueError(f"unknown field {', '.join(map(repr, unknown))}")
        for name, why in _REFUSED.items():
            if name in given:
                raise ValueError(f"{name}: {why}")
        prompt, messages = given.get("prompt"), given.get("messages")
        if (prompt is None) == (messages is None):
            raise ValueError("give a prompt or messages (one of them)")
        if prompt is not None:
            if not isinstance(prompt, str):
                raise ValueError("prompt must be a string")
            if not prompt.strip():
                raise ValueError("empty prompt")
        else:
            _check_messages(messages)
        max_new = given.get("max_new_tokens", settings.max_new_tokens)
        if isinstance(max_new, bool) or not isinstance(max_new, int) or max_new < 0:
            raise ValueError(f"max_new_tokens must be a whole number >= 0, got {max_new!r}")
        stop = given.get("stop", list(settings.stop))
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise ValueError("stop must be a string or a list of strings")
        logprobs = given.get("logprobs", settings.logprobs)
        if not isinstance(logprobs, bool):
            raise TypeError("logprobs must be true or false")
        seed = given.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        sampling = {k: given[k] for k in (*row_fields, *group_fields) if k in given}
        from .params import SamplingParams

        # The record's own values, alone: a bad one is named here, before any model runs.
        SamplingParams(**{k: _convert(k, v) for k, v in sampling.items()}, seed=seed)
    except (ValueError, TypeError) as e:
        return {"id": rid, "error": str(e)}
    return {
        "id": rid,
        "prompt": prompt,
        "messages": messages,
        "max_new_tokens": max_new,
        "stop": sorted(set(stop)),
        "sampling": sampling,
        "seed": record_seed(settings.seed, rid) if seed is None else seed,
        "logprobs": logprobs,
    }


def read_tasks(path: str, settings: Settings) -> tuple[list[Record], list[Record]]:
    """(tasks, error records) of an input file; every id appears in exactly one of them. A
    duplicated id becomes one error record naming its lines (which of two records sharing
    an id was meant is not ours to guess)."""
    parsed: list[tuple[int, Record]] = []
    for line, obj in read_input(path):
        if isinstance(obj, str):
            parsed.append((line, {"id": line, "error": obj}))
        else:
            parsed.append((line, parse_record(obj, line, settings)))
    lines: dict[RecordId, list[int]] = {}
    for line, rec in parsed:
        lines.setdefault(rec["id"], []).append(line)
    tasks: list[Record] = []
    errors: list[Record] = []
    for line, rec in parsed:
        where = lines[rec["id"]]
        if len(where) > 1:
            if where[0] == line:
                errors.append(
                    {"id": rec["id"], "error": f"duplicate id (lines {', '.join(map(str, where))})"}
                )
        elif "error" in rec:
            errors.append(rec)
        else:
            tasks.append(rec)
    return tasks, errors


def plan_batches(tasks: Iterable[Record], batch_size: int) -> list[Record]:
    """The batches of a run: tasks in id order, split by what one generate call must share
    (max_new_tokens, stop strings, the sampling fields that are not per-row), then cut into
    runs of `batch_size`. A fixed rule on the records alone: the engine's partitioning never
    decides which records share a batch."""
    groups: dict[str, list[Record]] = {}
    _, group_fields = _field_sets()
    for t in sorted(tasks, key=lambda t: id_key(t["id"])):
        shared = {k: v for k, v in t["sampling"].items() if k in group_fields}
        key = json.dumps([t["max_new_tokens"], t["stop"], shared], sort_keys=True)
        groups.setdefault(key, []).append(t)
    batches: list[Record] = []
    for key in sorted(groups, key=lambda k: id_key(groups[k][0]["id"])):
        # The shared sampling fields stay in each task's own fields (the worker reads those).
        max_new, stop, _ = json.loads(key)
        rows = groups[key]
        for i in range(0, len(rows), batch_size):
            batches.append(
                {"max_new_tokens": max_new, "stop": stop, "tasks": rows[i : i + batch_size]}
            )
    return batches


# ==============================================================================================
# the worker: one model, planned batches in, output records out
# ==============================================================================================


class Worker:
    """Loads the model once and generates planned batches. The in-process path runs one;
    under Ray every worker (a Ray Data actor) runs one. Never raises for a record: a batch
    that fails is run again one record at a time (with row-invariant logits each record
    then gets the same tokens it would have got in the batch), and a record that fails alone
    becomes an error record."""

    def __init__(self, settings: Settings, threads: int | None = None) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        from .generate import sampling_params
        from .model import load

        self.settings = settings
        self.model: DecoderLM
        self.tokenizer: Tokenizer
        self.model, self.tokenizer = load(
            settings.model, device=settings.device, dtype=settings.dtype
        )
        self.model.set_row_invariant(True)
        chat = settings.chat
        self.chat = bool(self.tokenizer.chat_template) if chat is None else chat
        if settings.system is not None and not self.chat:
            raise ValueError("system needs the chat template, and this run does not use it")
        # Run defaults over the model's recommended settings, as `tokensampler generate`.
        self.base = sampling_params(self.model, None, **dict(settings.sampling))

    def run(self, batch: Record) -> list[Record]:
        """Output records for the tasks of one planned batch, in its order."""
        out: dict[int, Record] = {}
        ready: list[tuple[int, list[int], SamplingParams]] = []
        for i, task in enumerate(batch["tasks"]):
            try:
                ids, sp = self._prepare(task, batch)
            except Exception as e:  # noqa: BLE001 - a chat template raises its own types
                out[i] = {"id": task["id"], "error": _message(e)}
                continue
            ready.append((i, ids, sp))
        if ready:
            try:
                gen = self._generate(ready, batch)
                for j, (i, ids, _) in enumerate(ready):
                    out[i] = self._record(batch["tasks"][i], ids, gen, j)
            except Exception:  # noqa: BLE001 - one record's failure; each is run alone
                for i, ids, sp in ready:
                    try:
                        gen = self._generate([(i, ids, sp)], batch)
                        out[i] = self._record(batch["tasks"][i], ids, gen, 0)
                    except Exception as e:  # noqa: BLE001 - becomes its error record
                        out[i] = {"id": batch["tasks"][i]["id"], "error": _message(e)}
        return [out[i] for i in range(len(batch["tasks"]))]

    def _prepare(self, task: Record, batch: Record) -> tuple[list[int], SamplingParams]:
        """The task's prompt ids and its own validated SamplingParams (scalars)."""
        from .generate import prompt_token_ids

        if task["messages"] is not None:
            ids = self.tokenizer.encode_chat(task["messages"])
        else:
            ids = prompt_token_ids(
                self.tokenizer, task["prompt"], chat=self.chat, system=self.settings.system
            )[0]
        n, ctx = len(ids), self.model.max_seq_len
        if n + batch["max_new_tokens"] > ctx:
            raise ValueError(
                f"prompt ({n} tokens) + max_new_tokens ({batch['max_new_tokens']}) exceeds "
                f"the model's context length {ctx}"
            )
        fields = {k: _convert(k, v) for k, v in task["sampling"].items()}
        return ids, self.base.replace(**fields, seed=task["seed"])

    def _generate(
        self, rows: Sequence[tuple[int, list[int], SamplingParams]], batch: Record
    ) -> Generation:
        from .generate import generate

        row_fields, _ = _field_sets()
        params = [sp for _, _, sp in rows]
        columns: dict[str, Any] = {}
        for name in row_fields:
            values = [getattr(sp, name) for sp in params]
            if any(v != values[0] for v in values):
                if name == "logit_bias":
                    values = [v if v is not None else {} for v in values]
                columns[name] = values
            else:
                columns[name] = values[0]
        sp = params[0].replace(**columns, seed=[p.seed for p in params])
        return generate(
            self.model,
            self.tokenizer,
            [ids for _, ids, _ in rows],
            params=sp,
            max_new_tokens=batch["max_new_tokens"],
            stop=batch["stop"] or None,
            ignore_eos=self.settings.ignore_eos,
        )

    def _record(self, task: Record, ids: list[int], gen: Generation, j: int) -> Record:
        rec: Record = {
            "id": task["id"],
            "text": gen.texts[j],
            "token_ids": gen.token_ids[j],
            "finish_reason": gen.finish_reasons[j],
            "prompt_tokens": len(ids),
            "completion_tokens": len(gen.token_ids[j]),
        }
        if task["logprobs"]:
            rec["logprobs"] = gen.logprobs[j]
        if gen.token_logprobs is not None:
            rec["token_logprobs"] = gen.token_logprobs[j]
        return rec


def _message(e: Exception) -> str:
    text = str(e)
    return (
        text if isinstance(e, (ValueError, TypeError)) and text else f"{type(e).__name__}: {text}"
    )


class _RayWorker:
    """The Ray Data UDF: one `Worker` per actor. A Ray batch holds planned batches, one per
    row (a JSON string), and comes back as their output records (a JSON list per row)."""

    def __init__(self, settings: Settings, threads: int | None) -> None:
        self.worker = Worker(settings, threads)

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import numpy as np

        out = [_dumps_list(self.worker.run(json.loads(b))) for b in rows["batch"]]
        return {"out": np.array(out, dtype=object)}


# ==============================================================================================
# output: the partial file, resume, the final sorted file
# ==============================================================================================


def _dumps(rec: Record) -> str:
    # Compact, UTF-8, keys in the order the records are built: the same record is always
    # the same bytes (floats print as their shortest repr).
    return json.dumps(rec, ensure_ascii=False, separators=(",", ":"))


def _dumps_list(recs: list[Record]) -> str:
    return "[" + ",".join(_dumps(r) for r in recs) + "]"


class _Partial:
    """`OUT.partial`: a header line (the settings' fingerprint), then output records as JSONL,
    appended one batch per write and flushed to disk, so that an interrupted run loses at
    most the batches in flight."""

    def __init__(self, path: str, settings: Settings, resume: bool) -> None:
        self.path = path
        self.done: dict[RecordId, Record] = {}
        header = {"tokensampler_batch": 1, "fingerprint": settings.fingerprint()}
        if os.path.exists(path):
            if not resume:
                raise ValueError(
                    f"{path} holds an interrupted run: add --resume to continue it, or "
                    "delete it to start again"
                )
            self._load(header)
            self.f = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        else:
            self.f = open(path, "w", encoding="utf-8")  # noqa: SIM115
            self.f.write(_dumps(header) + "\n")
            self._sync()

    def _load(self, header: Record) -> None:
        with open(self.path, "rb") as f:
            data = f.read()
        # A line cut by the interruption (no newline yet) is dropped and written again.
        end = data.rfind(b"\n") + 1
        if end < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(end)
        lines = data[:end].decode("utf-8").splitlines()
        if not lines:  # interrupted before its header was written: nothing to keep
            self.f = open(self.path, "w", encoding="utf-8")  # noqa: SIM115
            self.f.write(_dumps(header) + "\n")
            self.f.close()
            return
        try:
            first = json.loads(lines[0])
        except json.JSONDecodeError:
            first = {}
        if first != header:
            raise ValueError(
                f"{self.path} was written by a run with other settings (model, sampling, "
                "seed, max-new-tokens, stop, chat or logprobs); delete it or run with the "
                "same settings"
            )
        for line in lines[1:]:
            rec = json.loads(line)
            self.done.setdefault(rec["id"], rec)

    def _sync(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())

    def write(self, recs: Sequence[Record]) -> None:
        self.f.write("".join(_dumps(r) + "\n" for r in recs))
        self._sync()
        for r in recs:
            self.done.setdefault(r["id"], r)

    def close(self) -> None:
        self.f.close()


def _write_output(path: str, records: list[Record]) -> None:
    """The final file, atomically (a temporary file renamed over it)."""
    tmp = f"{path}.tmp"
    if _format(path, "output") == "jsonl":
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("".join(_dumps(r) + "\n" for r in records))
    else:
        _write_parquet(tmp, records)
    os.replace(tmp, path)


def _write_parquet(path: str, records: list[Record]) -> None:
    pa, pq = _import_pyarrow()
    # One id type per column: integers when every id is an int64, else strings.
    all_int = all(isinstance(r["id"], int) and -(2**63) <= r["id"] < 2**63 for r in records)
    columns: dict[str, Any] = {
        "id": pa.array(
            [r["id"] if all_int else str(r["id"]) for r in records],
            pa.int64() if all_int else pa.string(),
        ),
        "text": pa.array([r.get("text") for r in records], pa.string()),
        "token_ids": pa.array([r.get("token_ids") for r in records], pa.list_(pa.int64())),
        "finish_reason": pa.array([r.get("finish_reason") for r in records], pa.string()),
        "prompt_tokens": pa.array([r.get("prompt_tokens") for r in records], pa.int64()),
        "completion_tokens": pa.array([r.get("completion_tokens") for r in records], pa.int64()),
        "logprobs": pa.array([r.get("logprobs") for r in records], pa.list_(pa.float64())),
    }
    if any("token_logprobs" in r for r in records):
        columns["token_logprobs"] = pa.array(
            [r.get("token_logprobs") for r in records], pa.list_(pa.list_(pa.float64()))
        )
    columns["error"] = pa.array([r.get("error") for r in records], pa.string())
    pq.write_table(pa.table(columns), path)


def _import_pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa  # type: ignore[import-untyped]
        import pyarrow.parquet as pq  # type: ignore[import-untyped]
    except ImportError:
        raise ImportError(f"Parquet needs pyarrow: {EXTRA}") from None
    return pa, pq


def _import_pyarrow_parquet() -> Any:
    return _import_pyarrow()[1]


# ==============================================================================================
# running: in process or on Ray Data
# ==============================================================================================


@dataclass
class BatchSummary:
    """What `run` did. Rates count the records generated by this run (resumed ones are not),
    over the wall time from the start (model loading and Ray's start-up included); the
    `steady_*` figures from the moment every worker has returned its first batch to the
    last batch, which leaves loading and start-up out (benches/bench_batch.py reports them)."""

    output: str
    records: int  # in the output file
    errors: int  # output records with an error (all of them, resumed ones included)
    resumed: int  # records already in OUT.partial when the run started
    generated: int  # records this run wrote
    new_tokens: int  # tokens this run generated
    seconds: float
    steady_records: int = 0  # records after every worker's first batch...
    steady_tokens: int = 0
    steady_seconds: float = 0.0  # ...and the time they took

    @property
    def records_per_second(self) -> float:
        return self.generated / self.seconds if self.seconds > 0 else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def steady_records_per_second(self) -> float:
        s = self.steady_seconds
        return self.steady_records / s if s > 0 else self.records_per_second

    @property
    def steady_tokens_per_second(self) -> float:
        s = self.steady_seconds
        return self.steady_tokens / s if s > 0 else self.tokens_per_second

    def line(self) -> str:
        """The one-line summary the CLI prints."""
        resumed = f", {self.resumed} resumed" if self.resumed else ""
        return (
            f"[{self.records} records ({self.errors} errors{resumed}), {self.new_tokens} new "
            f"tokens, {self.records_per_second:.2f} records/s, {self.tokens_per_second:.1f} "
            f"tokens/s, {self.seconds:.1f} s; {self.output}]"
        )


class _Progress:
    """Counts, and a tqdm bar on stderr when asked (the CLI asks when stderr is a terminal)."""

    def __init__(self, total: int, show: bool, warmup: int) -> None:
        self.t0 = self.last = time.perf_counter()
        self.records = self.tokens = self.errors = 0
        # The steady rate starts once every worker has returned a batch: a worker's first
        # batch waits for its model to load, and counting from the very first result would
        # credit the other workers' first batches to the measured interval.
        self.warmup, self.batches = warmup, 0
        self.first: tuple[float, int, int] | None = None
        self.bar: Any = None
        if show and total:
            try:
                from tqdm import tqdm  # type: ignore[import-untyped]
            except ImportError:  # the bar is optional; the summary line is always printed
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(
                    total=total, unit="rec", file=sys.stderr, dynamic_ncols=True, smoothing=0.1
                )

    def update(self, recs: Sequence[Record], batch: bool = True) -> None:
        """Count `recs`: a finished batch, or (batch=False) records that needed no model."""
        self.records += len(recs)
        self.tokens += sum(r.get("completion_tokens", 0) for r in recs)
        self.errors += sum("error" in r for r in recs)
        now = self.last = time.perf_counter()
        self.batches += batch
        if batch and self.batches == self.warmup:
            self.first = (now, self.records, self.tokens)
        if self.bar is not None:
            dt = now - self.t0
            self.bar.set_postfix_str(
                f"{self.tokens / dt:.1f} tok/s, {self.errors} errors", refresh=False
            )
            self.bar.update(len(recs))

    def steady(self) -> tuple[int, int, float]:
        """(records, tokens, seconds) after the warm-up; zeros when there were too few."""
        if self.first is None or self.last == self.first[0]:
            return 0, 0, 0.0
        t, r, k = self.first
        return self.records - r, self.tokens - k, self.last - t

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run(
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str] | None = None,
    device: str | None = None,
    dtype: str | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    seed: int = 0,
    stop: str | Sequence[str] | None = None,
    ignore_eos: bool = False,
    chat: bool | None = None,
    system: str | None = None,
    logprobs: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int = 1,
    ray: bool = False,
    address: str | None = None,
    cpus_per_worker: int | None = None,
    resume: bool = False,
    progress: bool = False,
    **sampling: Any,
) -> BatchSummary:
    """Generate a completion for every record of `input` (JSONL or Parquet) into `output`
    (JSONL or Parquet, by extension), sorted by id.

    Args:
        input: records with `id` (else the line number), `prompt` (or chat `messages`) and
            optional fields: any SamplingParams field, `max_new_tokens`, `seed`, `stop`,
            `logprobs`. docs/batch.md has the format.
        output: the result, written at the end; `output + ".partial"` holds finished
            records while the run goes on.
        model, device, dtype: as `tokensampler.model.load` (None: the embedded SmolLM2).
        max_new_tokens, stop, ignore_eos, chat, system, logprobs: defaults of every record
            (chat None: the chat template when the model has one).
        seed: the run seed; a record without a `seed` uses `record_seed(seed, id)`.
        batch_size: records per generate call (does not change the output).
        workers: Ray workers (`ray=True`); each loads the model once.
        ray: run on Ray Data (`pip install "tokensampler[batch]"`); a local cluster unless
            `address` names one (`address` alone implies `ray`).
        cpus_per_worker: CPUs Ray reserves per worker, and its torch threads (default: the
            cluster's CPUs / workers). In process: torch's thread count (default: torch's).
        resume: continue an interrupted run from `output + ".partial"`, skipping the ids
            already written; the final file is the same as an uninterrupted run's.
        progress: a tqdm bar on stderr (records/s, tokens/s, errors).
        **sampling: SamplingParams fields, the run's defaults (over the model's
            recommended settings, as `tokensampler generate` does).

    Returns:
        A `BatchSummary`.

    Raises:
        ValueError: a bad option or file (before any generation); ImportError: `ray=True`
            without Ray installed.
    """
    t0 = time.perf_counter()
    inp, out = os.fspath(input), os.fspath(output)
    use_ray = ray or address is not None
    settings = _settings(
        model,
        device,
        dtype,
        max_new_tokens,
        seed,
        stop,
        ignore_eos,
        chat,
        system,
        logprobs,
        sampling,
    )
    _check_options(inp, out, batch_size, workers, use_ray, cpus_per_worker)
    if use_ray:
        _import_ray()  # fail before reading anything
    tasks, errors = read_tasks(inp, settings)
    expected = {r["id"] for r in tasks} | {r["id"] for r in errors}
    partial = _Partial(out + ".partial", settings, resume)
    resumed = sum(1 for i in partial.done if i in expected)
    try:
        todo_errors = [r for r in errors if r["id"] not in partial.done]
        batches = plan_batches((t for t in tasks if t["id"] not in partial.done), batch_size)
        total = len(todo_errors) + sum(len(b["tasks"]) for b in batches)
        bar = _Progress(total, progress, warmup=workers if use_ray else 1)

        def sink(recs: list[Record]) -> None:
            partial.write(recs)
            bar.update(recs)

        try:
            if todo_errors:
                partial.write(todo_errors)
                bar.update(todo_errors, batch=False)
            if batches:
                execute = _run_ray if use_ray else _run_local
                execute(batches, settings, workers, cpus_per_worker, address, sink)
        finally:
            bar.close()
    finally:
        partial.close()
    missing = [i for i in expected if i not in partial.done]
    if missing:  # a worker returned fewer records than it was given: a bug, not bad input
        raise RuntimeError(f"{len(missing)} records have no output (e.g. id {missing[0]!r})")
    final = sorted((partial.done[i] for i in expected), key=lambda r: id_key(r["id"]))
    _write_output(out, final)
    os.remove(partial.path)
    steady = bar.steady()
    return BatchSummary(
        output=out,
        records=len(final),
        errors=sum("error" in r for r in final),
        resumed=resumed,
        generated=bar.records,
        new_tokens=bar.tokens,
        seconds=time.perf_counter() - t0,
        steady_records=steady[0],
        steady_tokens=steady[1],
        steady_seconds=steady[2],
    )


def _settings(
    model: str | os.PathLike[str] | None,
    device: str | None,
    dtype: str | None,
    max_new_tokens: int,
    seed: int,
    stop: str | Sequence[str] | None,
    ignore_eos: bool,
    chat: bool | None,
    system: str | None,
    logprobs: bool,
    sampling: Mapping[str, Any],
) -> Settings:
    """The run's settings, checked (a bad default fails here, before anything is read)."""
    from .params import SamplingParams

    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
        raise TypeError("max_new_tokens must be a whole number")
    if max_new_tokens < 0:
        raise ValueError("max_new_tokens must be >= 0")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"the run seed must be an integer, got {seed!r}")
    if system is not None and chat is False:
        raise ValueError("system needs the chat template; it cannot be used with chat=False")
    row_fields, group_fields = _field_sets()
    for name in sampling:
        if name in _REFUSED:
            raise ValueError(f"{name}: {_REFUSED[name]}")
        if name not in row_fields and name not in group_fields:
            raise ValueError(f"unknown sampling field {name!r}")
    SamplingParams(**sampling)  # a bad default is named now
    if model is not None and not os.path.exists(model):
        raise ValueError(f"{os.fspath(model)}: no such file or directory")
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    return Settings(
        model=None if model is None else os.path.abspath(model),
        device=device,
        dtype=dtype,
        chat=chat,
        system=system,
        max_new_tokens=max_new_tokens,
        seed=seed,
        stop=tuple(sorted(set(stops))),
        ignore_eos=ignore_eos,
        logprobs=logprobs,
        sampling=dict(sampling),
    )


def _check_options(
    inp: str, out: str, batch_size: int, workers: int, use_ray: bool, cpus: int | None
) -> None:
    if not os.path.isfile(inp):
        raise ValueError(f"{inp}: no such file")
    _format(inp, "input")
    _format(out, "output")
    if os.path.abspath(inp) == os.path.abspath(out):
        raise ValueError("the output would overwrite the input")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError("batch size must be a whole number >= 1")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError("workers must be a whole number >= 1")
    if workers > 1 and not use_ray:
        raise ValueError("more than one worker needs Ray (--ray, or an address)")
    if cpus is not None and (isinstance(cpus, bool) or not isinstance(cpus, int) or cpus < 1):
        raise ValueError("CPUs per worker must be a whole number >= 1")


Sink = Callable[[list[Record]], None]


def _run_local(
    batches: list[Record],
    settings: Settings,
    workers: int,
    cpus: int | None,
    address: str | None,
    sink: Sink,
) -> None:
    import torch

    threads = torch.get_num_threads()
    try:
        worker = Worker(settings, cpus)
        for batch in batches:
            sink(worker.run(batch))
    finally:
        torch.set_num_threads(threads)  # the caller's process is left as it was


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # ray[data], not ray alone
    except ImportError:
        raise ImportError(f"--ray needs Ray Data: {EXTRA}") from None
    return ray


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _run_ray(
    batches: list[Record],
    settings: Settings,
    workers: int,
    cpus: int | None,
    address: str | None,
    sink: Sink,
) -> None:
    """The planned batches on Ray Data: one row per batch, `map_batches` over an actor pool
    of `workers` actors (each loads the model once, with `cpus` CPUs reserved and as many
    torch threads), the results streamed back to the driver's `sink` as they finish."""
    import logging

    ray = _import_ray()
    started = False
    with warnings.catch_warnings():
        # Ray warns about its own deprecated defaults on import of its data context.
        warnings.simplefilter("ignore", DeprecationWarning)
        if not ray.is_initialized():
            kw: dict[str, Any] = {
                "include_dashboard": False,
                "log_to_driver": False,
                "logging_level": logging.ERROR,
            }
            if address is None:
                kw["num_cpus"] = _cpus()
            ray.init(address=address, **kw)
            started = True
        try:
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False  # ours counts records and tokens
            ctx.print_on_execution_start = False
            logging.getLogger("ray.data").setLevel(logging.ERROR)
            if cpus is None:
                cpus = max(1, int(ray.cluster_resources().get("CPU", 1)) // workers)
            workers = min(workers, len(batches))  # an idle actor would only load a model
            threads = str(cpus)
            gpus = 1 if settings.device is not None and settings.device.startswith("cuda") else 0
            ds = ray.data.from_items(
                [{"batch": json.dumps(b, ensure_ascii=False)} for b in batches],
                override_num_blocks=len(batches),  # one block per planned batch
            )
            ds = ds.map_batches(
                _RayWorker,
                fn_constructor_kwargs={"settings": settings, "threads": cpus},
                batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=workers),
                num_cpus=cpus,
                num_gpus=gpus,
                runtime_env={"env_vars": {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}},
            )
            for row in ds.iter_rows():
                sink(json.loads(row["out"]))
        finally:
            if started:
                ray.shutdown()


# ==============================================================================================
# the command line
# ==============================================================================================

_EPILOG = """\
input records (one JSON object per line, or one Parquet row):
  {"id": 1, "prompt": "Translate to French: cheese"}
  {"id": "q2", "messages": [{"role": "user", "content": "Hi"}], "temperature": 0.9}
  {"prompt": "Name a color.", "max_new_tokens": 8, "seed": 42, "stop": ["."]}
output records (sorted by id; --logprobs adds "logprobs"):
  {"id":1,"text":"...","token_ids":[...],"finish_reason":"eos","prompt_tokens":31,
   "completion_tokens":9}
  {"id":7,"error":"empty prompt"}

examples:
  tokensampler batch prompts.jsonl -o out.jsonl --temperature 0.7 --seed 1
  tokensampler batch prompts.parquet -o out.parquet --ray --workers 2
  tokensampler batch prompts.jsonl -o out.jsonl --resume   # after an interruption
  tokensampler batch prompts.jsonl -o out.jsonl --address ray://head:10001 --workers 16
"""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the `batch` command to the `tokensampler` CLI's subparsers (cli.py)."""
    from .cli import add_sampling_options

    b: argparse.ArgumentParser = sub.add_parser(
        "batch",
        help="generate for every record of a JSONL or Parquet file, in process or on Ray",
        description="Generate a completion for every record of IN (JSONL or Parquet) into "
        "OUT, sorted by id. The output is the same bytes for any batch size, worker count or "
        "resume: each record's seed comes from the run seed and its id (docs/batch.md).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument("input", metavar="IN", help="a .jsonl or .parquet file of records")
    b.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        required=True,
        help="the output file, .jsonl or .parquet; OUT.partial holds finished "
        "records while the run goes on",
    )
    b.add_argument(
        "--model",
        metavar="PATH",
        default=None,
        help="a Hugging Face model folder or a .gguf file (default: the embedded "
        "SmolLM2-135M-Instruct)",
    )
    b.add_argument("--device", default=None, help="cpu, cuda or cuda:N")
    b.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None)
    s = b.add_argument_group(
        "sampling defaults (a record's own fields win; not given: the model's recommended "
        "settings, else off)"
    )
    add_sampling_options(s, default_notes=False)  # the same options as generate
    s.add_argument(
        "--seed",
        type=int,
        default=0,
        help="the run seed: a record without its own seed uses blake2b(run seed, id) (default 0)",
    )
    g = b.add_argument_group("generation defaults")
    g.add_argument(
        "--max-new-tokens",
        type=int,
        metavar="N",
        default=DEFAULT_MAX_NEW_TOKENS,
        help=f"default {DEFAULT_MAX_NEW_TOKENS}",
    )
    g.add_argument(
        "--stop",
        action="append",
        default=None,
        metavar="TEXT",
        help="stop when this text is generated; may be repeated",
    )
    g.add_argument("--ignore-eos", action="store_true", help="do not stop at end-of-sequence")
    chat = g.add_mutually_exclusive_group()
    chat.add_argument(
        "--chat",
        dest="chat",
        action="store_const",
        const=True,
        default=None,
        help="wrap prompts with the chat template (default when the model has one)",
    )
    chat.add_argument(
        "--no-chat",
        dest="chat",
        action="store_const",
        const=False,
        help="feed prompts as raw text to continue",
    )
    g.add_argument("--system", default=None, metavar="TEXT", help="system message of chat prompts")
    g.add_argument("--logprobs", action="store_true", help="write each token's log-probability")
    r = b.add_argument_group("execution (none of these changes the output)")
    r.add_argument(
        "--batch-size",
        type=int,
        metavar="N",
        default=DEFAULT_BATCH_SIZE,
        help=f"records per generate call (default {DEFAULT_BATCH_SIZE})",
    )
    r.add_argument(
        "--ray",
        action="store_true",
        help=f"run on Ray Data, a local cluster unless --address ({EXTRA})",
    )
    r.add_argument(
        "--address",
        default=None,
        help="a Ray cluster to run on (e.g. ray://head:10001 or auto); implies --ray",
    )
    r.add_argument(
        "--workers",
        type=int,
        metavar="N",
        default=1,
        help="Ray workers, each holding one copy of the model (default 1)",
    )
    r.add_argument(
        "--cpus-per-worker",
        type=int,
        default=None,
        metavar="N",
        help="CPUs reserved per Ray worker and its torch threads (default: the "
        "cluster's CPUs / workers); in process, torch's thread count",
    )
    r.add_argument(
        "--resume", action="store_true", help="continue an interrupted run from OUT.partial"
    )
    r.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (it is drawn only when stderr is a terminal)",
    )
    return b


def _fail(message: str) -> int:
    print(f"tokensampler: error: {message}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def main(args: argparse.Namespace) -> int:
    """`tokensampler batch`: run, then print the summary line; returns the exit status."""
    from .cli import sampling_fields

    try:
        sampling = sampling_fields(args)  # the run's defaults, parsed as generate parses them
        summary = run(
            args.input,
            args.output,
            model=args.model,
            device=args.device,
            dtype=args.dtype,
            max_new_tokens=args.max_new_tokens,
            seed=args.seed,
            stop=args.stop,
            ignore_eos=args.ignore_eos,
            chat=args.chat,
            system=args.system,
            logprobs=args.logprobs,
            batch_size=args.batch_size,
            workers=args.workers,
            ray=args.ray,
            address=args.address,
            cpus_per_worker=args.cpus_per_worker,
            resume=args.resume,
            progress=not args.no_progress and sys.stderr.isatty(),
            **sampling,
        )
    except KeyboardInterrupt:
        partial = f"{args.output}.partial"
        print(
            f"\ntokensampler: interrupted; finished records are in {partial}: run the same "
            "command with --resume to continue",
            file=sys.stderr,
            flush=True,
        )
        return 130
    except (ValueError, TypeError, ImportError, OSError) as e:
        return _fail(str(e))
    print(summary.line(), file=sys.stderr, flush=True)
    return 0
