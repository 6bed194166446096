"""tokensampler.batch and `tokensampler batch`: the record format, the seed rule, bad records,
the row-invariant forward, byte-identical output for any batch size / worker count / resume,
Parquet, and the same run on Ray Data (the tests marked `ray`: a local 2-CPU cluster).

The model tests run the embedded SmolLM2-135M with 8 new tokens and one torch thread, so the
whole file takes a few minutes on two cores (most of it Ray starting its workers).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
from model_helpers import default_model
from tokensampler import batch
from tokensampler.batch import id_key, plan_batches, read_tasks, record_seed
from tokensampler.model.common import Linear

MAX_NEW = 8
# Ten good records with their own sampling fields, chat messages, a record without an id
# (it gets its line number, 12), string ids, and two bad records (4: empty, 6: invalid).
RECORDS: list[dict[str, Any]] = [
    {"id": 1, "prompt": "Name a color."},
    {"id": 2, "prompt": "What is 2+2?", "temperature": 0.9, "top_k": 40},
    {
        "id": 3,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hi."},
        ],
    },
    {"id": 4, "prompt": "   "},
    {"id": 5, "prompt": "Translate to French: cheese", "max_new_tokens": 5, "seed": 42},
    {"id": 6, "prompt": "Tell me a joke", "temperature": -1},
    {"id": 7, "prompt": "List three fruits", "stop": [","], "min_p": 0.1},
    {"id": 8, "prompt": "Once upon a time", "logprobs": True, "temperature": 1.0},
    {"id": "b", "prompt": "Capital of Italy?", "repetition_penalty": 1.3, "temperature": 1.0},
    {"id": "a", "prompt": "Largest planet?", "logit_bias": {"504": -5}, "temperature": 0.7},
    {"id": 11, "prompt": "Why is the sky blue?", "order": "vllm", "top_p": 0.8},
    {"prompt": "Write a haiku.", "temperature": 1.2, "presence_penalty": 0.5},
]
IDS = [1, 2, 3, 4, 5, 6, 7, 8, "b", "a", 11, 12]
BAD = {4, 6}
SETTINGS = batch.Settings(max_new_tokens=MAX_NEW)


def write_jsonl(path: Path, records: list[dict[str, Any]], extra: bytes = b"") -> Path:
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in records) + extra)
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ==============================================================================================
# no model: seeds, ids, parsing, planning, the partial file
# ==============================================================================================


def test_record_seed_is_a_stable_digest_of_run_seed_and_id() -> None:
    # Pinned: a change would silently change every seeded run's output.
    assert record_seed(0, 1) == 4810391970990670365
    assert record_seed(0, 1) != record_seed(1, 1)
    assert record_seed(0, 7) != record_seed(0, "7")
    assert all(0 <= record_seed(s, i) < 2**63 for s in (0, -1, 2**70) for i in (0, "x", 10**30))


def test_ids_sort_integers_first_then_strings() -> None:
    assert sorted([10, "b", 2, "a", "10", -1], key=id_key) == [-1, 2, 10, "10", "a", "b"]


@pytest.mark.parametrize(
    ("record", "needle"),
    [
        ({"id": 1, "prompt": ""}, "empty prompt"),
        ({"id": 1, "prompt": " \n"}, "empty prompt"),
        ({"id": 1}, "give a prompt or messages"),
        ({"id": 1, "prompt": "x", "messages": [{"role": "user", "content": "y"}]}, "one of"),
        ({"id": 1, "messages": []}, "messages must be"),
        ({"id": 1, "messages": [{"role": "user"}]}, "string content"),
        ({"id": 1, "messages": [{"role": "user", "content": " "}]}, "empty prompt"),
        ({"id": 1, "prompt": 3}, "prompt must be a string"),
        ({"id": 1, "prompt": "x", "temprature": 1}, "unknown field 'temprature'"),
        ({"id": 1, "prompt": "x", "top_p": 1.5}, "top_p"),
        ({"id": 1, "prompt": "x", "top_k": "many"}, "top_k"),
        ({"id": 1, "prompt": "x", "order": "nope"}, "order"),
        ({"id": 1, "prompt": "x", "logit_bias": {"a": 1}}, "logit_bias"),
        ({"id": 1, "prompt": "x", "max_new_tokens": -1}, "max_new_tokens"),
        ({"id": 1, "prompt": "x", "max_new_tokens": 2.5}, "max_new_tokens"),
        ({"id": 1, "prompt": "x", "seed": "1"}, "seed must be an integer"),
        ({"id": 1, "prompt": "x", "stop": [1]}, "stop must be"),
        ({"id": 1, "prompt": "x", "logprobs": "yes"}, "logprobs"),
        ({"id": 1, "prompt": "x", "token_bitmask": [1]}, "token_bitmask"),
        ({"id": 1, "prompt": "x", "top_logprobs": 3}, "top_logprobs"),
    ],
)
def test_bad_records_become_error_records(record: dict[str, Any], needle: str) -> None:
    out = batch.parse_record(record, 5, SETTINGS)
    assert set(out) == {"id", "error"} and out["id"] == 1
    assert needle in out["error"]


def test_good_record_fields_and_null_is_not_given() -> None:
    t = batch.parse_record(
        {"id": "q", "prompt": "x", "top_p": None, "seed": None, "temperature": 0.5, "stop": "."},
        3,
        SETTINGS,
    )
    assert "error" not in t
    assert t["sampling"] == {"temperature": 0.5}  # null top_p: the run default applies
    assert t["seed"] == record_seed(0, "q") and t["stop"] == ["."]
    assert t["max_new_tokens"] == MAX_NEW
    assert batch.parse_record({"prompt": "x", "seed": -3}, 9, SETTINGS)["id"] == 9
    assert batch.parse_record({"id": "\ud800", "prompt": "x"}, 9, SETTINGS)["id"] == 9
    assert batch.parse_record({"id": True, "prompt": "x"}, 9, SETTINGS) == {
        "id": 9,
        "error": "line 9: id must be an integer or a string",
    }


def test_read_tasks_bad_lines_duplicates_and_line_number_ids(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "in.jsonl",
        [{"id": 1, "prompt": "a"}, {"prompt": "b"}, {"id": 1, "prompt": "c"}],
        extra=b'{"prompt": "caf\xe9"}\n\n   \n{"prompt": \n[1, 2]\n{"id": "x", "prompt": "d"}\n',
    )
    tasks, errors = read_tasks(str(path), SETTINGS)
    assert [t["id"] for t in tasks] == [2, "x"]  # line 2 has no id; blank lines are skipped
    by_id = {e["id"]: e["error"] for e in errors}
    assert by_id == {
        1: "duplicate id (lines 1, 3)",  # one record for the id, naming both lines
        4: "line 4 is not valid UTF-8 (invalid continuation byte at byte 15)",
        7: "line 7 is not valid JSON: Expecting value (column 12)",
        8: "line 8 is not a JSON object",
    }


def test_batches_depend_on_the_records_not_their_order_or_partitioning() -> None:
    tasks = [
        batch.parse_record({"id": i, "prompt": "p", "max_new_tokens": 4 + i % 2}, i, SETTINGS)
        for i in range(20)
    ]
    plan = plan_batches(tasks, 3)
    assert plan == plan_batches(reversed(tasks), 3)
    # Any partitioning of the records (what an engine's blocks would be) plans the same.
    assert plan == plan_batches(tasks[13:] + tasks[5:13] + tasks[:5], 3)
    # One max_new_tokens per batch, ids ascending, batch_size at most.
    for b in plan:
        assert {t["max_new_tokens"] for t in b["tasks"]} == {b["max_new_tokens"]}
        ids = [t["id"] for t in b["tasks"]]
        assert ids == sorted(ids) and len(ids) <= 3
    assert [t["id"] for t in plan[0]["tasks"]] == [0, 2, 4]
    assert sorted(t["id"] for b in plan for t in b["tasks"]) == list(range(20))


def test_partial_file_refuses_mixing_runs_and_drops_a_cut_line(tmp_path: Path) -> None:
    out = str(tmp_path / "out.jsonl.partial")
    p = batch._Partial(out, SETTINGS, resume=False)
    p.write([{"id": 1, "error": "x"}])
    p.close()
    with pytest.raises(ValueError, match="--resume"):
        batch._Partial(out, SETTINGS, resume=False)
    with pytest.raises(ValueError, match="other settings"):
        batch._Partial(out, batch.Settings(max_new_tokens=MAX_NEW, seed=1), resume=True)
    with open(out, "ab") as f:
        f.write(b'{"id": 2, "te')  # the interruption cut this line
    p = batch._Partial(out, SETTINGS, resume=True)
    assert set(p.done) == {1}
    p.write([{"id": 2, "error": "y"}])
    p.close()
    lines = Path(out).read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines[1:]] == [1, 2]
    Path(out).write_bytes(b"")  # interrupted before even the header was written
    p = batch._Partial(out, SETTINGS, resume=True)
    assert p.done == {}
    p.close()


def test_ray_missing_is_a_clear_error_naming_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tokensampler.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    path = write_jsonl(tmp_path / "in.jsonl", RECORDS)
    assert main(["batch", str(path), "-o", str(tmp_path / "o.jsonl"), "--ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == 'tokensampler: error: --ray needs Ray Data: pip install "tokensampler[batch]"'
    assert main(["batch", str(path), "-o", str(tmp_path / "o.jsonl"), "--workers", "2"]) == 2
    assert "needs Ray" in capsys.readouterr().err
    assert main(["batch", str(path), "-o", str(tmp_path / "o.txt")]) == 2
    assert ".jsonl or .parquet" in capsys.readouterr().err
    assert main(["batch", str(path), "-o", str(tmp_path / "o.jsonl"), "--top-p", "2"]) == 2
    assert "top_p" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


# ==============================================================================================
# the model: row invariance, and runs in process
# ==============================================================================================

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def one_thread() -> Any:
    # One torch thread: deterministic speed on a shared 2-core machine (two threads thrash
    # when another process holds a core); the results do not depend on it (tested below).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def invariant_model() -> Any:
    model, tok = default_model()
    model.set_row_invariant(True)
    yield model, tok
    model.set_row_invariant(False)  # the cached model is shared with other test files


def _logits_steps(model: Any, rows: list[list[int]], steps: int = 3) -> list[Any]:
    """Last-position logits of a left-padded batch: the prefill, then `steps` decode steps
    fed the same token ids in every row."""
    P = max(len(r) for r in rows)
    idx = torch.zeros(len(rows), P, dtype=torch.long)
    for b, r in enumerate(rows):
        idx[b, P - len(r) :] = torch.tensor(r)
    pad = torch.tensor([P - len(r) for r in rows])
    cache = model.new_kv_cache(len(rows), min(256, model.max_seq_len))
    with torch.inference_mode():
        out = [model(idx, kv_cache=cache, pad=pad, last_only=True)[:, -1]]
        for s in range(steps):
            nxt = torch.full((len(rows), 1), 100 + s, dtype=torch.long)
            out.append(model(nxt, kv_cache=cache)[:, -1])
    return out


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_row_invariant_mode_of_both_architectures(arch: str) -> None:
    from model_helpers import random_model, tiny_gpt2_config, tiny_llama_config

    model = random_model(tiny_llama_config() if arch == "llama" else tiny_gpt2_config())
    rows = [[1, 2, 3], [5], [7, 8, 9, 10, 11, 12, 13], [4, 4], [9, 8, 7, 6]]
    model.set_row_invariant(True)
    batched = _logits_steps(model, rows)
    for b, r in enumerate(rows):
        alone = _logits_steps(model, [r])
        assert all(torch.equal(x[0], y[b]) for x, y in zip(alone, batched)), b
    with pytest.raises(ValueError, match="row-invariant"):
        model.compile_decode()  # fused kernels sum in their own order
    model.set_row_invariant(False)
    assert type(model.lm_head) is Linear  # the batched kernels are back
    model._compiled_step = object()  # as compile_decode leaves it (without compiling here)
    with pytest.raises(ValueError, match="compile_decode"):
        model.set_row_invariant(True)


def test_row_invariant_forward_is_bit_identical_to_the_row_alone(
    invariant_model: Any, one_thread: Any
) -> None:
    model, tok = invariant_model
    rows = [
        tok.encode(t)
        for t in (
            "Hi",
            "The quick brown fox jumps over the lazy dog",
            "Once upon a time there",
            "x",
            "Name three colors",
        )
    ]
    batched = _logits_steps(model, rows)
    two = _logits_steps(model, rows[1:3])
    for b, r in enumerate(rows):
        alone = _logits_steps(model, [r])
        for step, (x, y) in enumerate(zip(alone, batched)):
            assert torch.equal(x[0], y[b]), (b, step)
    for step, (x, y) in enumerate(zip(two, batched)):
        assert torch.equal(x, y[1:3]), step
    # ...and with two threads (Ray workers get fewer threads than one process does).
    torch.set_num_threads(2)
    try:
        two_threads = _logits_steps(model, rows)
    finally:
        torch.set_num_threads(1)
    assert all(torch.equal(x, y) for x, y in zip(two_threads, batched))
    # The default batched kernels are not row-invariant on this CPU, which is why the mode
    # exists (if this starts to fail, the mode may have become unnecessary: docs/batch.md).
    model.set_row_invariant(False)
    plain = _logits_steps(model, rows)
    alone = [_logits_steps(model, [r]) for r in rows]
    assert any(
        not torch.equal(a[s][0], plain[s][b])
        for b, a in enumerate(alone)
        for s in range(len(plain))
    )


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("batch") / "in.jsonl", RECORDS)


@pytest.fixture(scope="module")
def reference(inputs: Path, one_thread: Any) -> Path:
    """The in-process run, batch size 8: the file every other run must equal byte for byte."""
    out = inputs.parent / "reference.jsonl"
    s = batch.run(inputs, out, max_new_tokens=MAX_NEW, batch_size=8)
    assert (s.records, s.errors, s.generated, s.resumed) == (12, 2, 12, 0)
    assert not Path(f"{out}.partial").exists()
    return out


def test_every_input_id_once_sorted_and_bad_records_have_errors(reference: Path) -> None:
    out = read_jsonl(reference)
    assert [r["id"] for r in out] == sorted(IDS, key=id_key)
    for r in out:
        if r["id"] in BAD:
            assert set(r) == {"id", "error"}
        else:
            assert list(r)[:6] == [
                "id",
                "text",
                "token_ids",
                "finish_reason",
                "prompt_tokens",
                "completion_tokens",
            ]
            assert r["completion_tokens"] == len(r["token_ids"]) >= 1
    by_id = {r["id"]: r for r in out}
    assert by_id[4]["error"] == "empty prompt"
    assert "temperature" in by_id[6]["error"]
    assert len(by_id[5]["token_ids"]) <= 5  # its own max_new_tokens
    assert len(by_id[8]["logprobs"]) == len(by_id[8]["token_ids"])  # asked for logprobs
    assert "logprobs" not in by_id[1]
    assert "," not in by_id[7]["text"]  # its stop string


def test_a_record_equals_generate_on_that_record_alone(
    reference: Path, invariant_model: Any, one_thread: Any
) -> None:
    """The oracle: `generate` called on one record alone, with that record's settings over
    the model's recommended ones and its seed from `record_seed` (or its own)."""
    from tokensampler.generate import generate, prompt_token_ids

    model, tok = invariant_model
    out = {r["id"]: r for r in read_jsonl(reference)}
    cases = [
        ("a", {"logit_bias": {504: -5.0}, "temperature": 0.7}),
        (2, {"temperature": 0.9, "top_k": 40}),
        ("b", {"repetition_penalty": 1.3, "temperature": 1.0}),
    ]
    for rid, fields in cases:
        rec = next(r for r in RECORDS if r.get("id") == rid)
        ids = prompt_token_ids(tok, rec["prompt"], chat=True)
        g = generate(model, tok, ids, max_new_tokens=MAX_NEW, seed=[record_seed(0, rid)], **fields)
        assert out[rid]["token_ids"] == g.token_ids[0], rid
        assert out[rid]["text"] == g.texts[0] and out[rid]["finish_reason"] == g.finish_reasons[0]
    # messages go through the chat template as given; record 5 uses its own seed
    g = generate(
        model,
        tok,
        tok.encode_chat(RECORDS[2]["messages"]),
        max_new_tokens=MAX_NEW,
        seed=[record_seed(0, 3)],
    )
    assert out[3]["token_ids"] == g.token_ids[0]
    g = generate(
        model,
        tok,
        prompt_token_ids(tok, RECORDS[4]["prompt"], chat=True),
        max_new_tokens=5,
        seed=[42],
    )
    assert out[5]["token_ids"] == g.token_ids[0]


def test_batch_size_does_not_change_the_file(inputs: Path, reference: Path) -> None:
    for size in (1, 3):
        out = inputs.parent / f"bs{size}.jsonl"
        batch.run(inputs, out, max_new_tokens=MAX_NEW, batch_size=size)
        assert out.read_bytes() == reference.read_bytes(), size


def test_another_run_seed_changes_the_text(inputs: Path, reference: Path) -> None:
    out = inputs.parent / "seed1.jsonl"
    batch.run(inputs, out, max_new_tokens=MAX_NEW, seed=1)
    a, b = read_jsonl(reference), read_jsonl(out)
    assert [r["id"] for r in a] == [r["id"] for r in b]
    differ = [x["id"] for x, y in zip(a, b) if x.get("token_ids") != y.get("token_ids")]
    assert differ and 5 not in differ  # record 5 has its own seed


def _interrupted_run(at: int) -> Any:
    """A Worker.run that raises KeyboardInterrupt on its `at`-th call: an interrupted run."""
    real, calls = batch.Worker.run, [0]

    def run(worker: Any, b: Any) -> Any:
        calls[0] += 1
        if calls[0] == at:
            raise KeyboardInterrupt
        return real(worker, b)

    return run


def test_resume_after_an_interrupted_run_gives_the_same_file(
    inputs: Path, reference: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = inputs.parent / "resumed.jsonl"
    monkeypatch.setattr(batch.Worker, "run", _interrupted_run(at=3))
    with pytest.raises(KeyboardInterrupt):
        batch.run(inputs, out, max_new_tokens=MAX_NEW, batch_size=2)
    monkeypatch.undo()
    partial = Path(f"{out}.partial")
    assert not out.exists() and partial.exists()
    written = len(partial.read_text().splitlines()) - 1  # the header line
    assert written == 2 + 2 * 2  # the two bad records, then two batches of two
    with open(partial, "ab") as f:
        f.write(b'{"id":11,"text":"cut')  # the interruption also cut a line short
    with pytest.raises(ValueError, match="--resume"):
        batch.run(inputs, out, max_new_tokens=MAX_NEW)
    s = batch.run(inputs, out, max_new_tokens=MAX_NEW, batch_size=5, resume=True)
    assert (s.resumed, s.generated, s.records) == (written, 12 - written, 12)
    assert out.read_bytes() == reference.read_bytes()
    assert not partial.exists()


def test_more_bad_input_and_nothing_is_lost(tmp_path: Path, one_thread: Any) -> None:
    too_long = {"id": "long", "prompt": "a " * 9000}  # more tokens than the 8192 context
    banned = {str(i): float("-inf") for i in range(49152)}  # nothing left to sample
    path = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"id": "ok", "prompt": "Hi"},
            too_long,
            {"id": "room", "prompt": "Hi", "max_new_tokens": 8190},
            {"id": "banned", "prompt": "Hi", "logit_bias": banned},
            {"id": "fine", "prompt": "Hello"},
        ],
        extra=b'{"id": 9, "prompt": "\xff"}\n{"id": "ok", "prompt": "again"}\n',
    )
    out = tmp_path / "out.jsonl"
    batch.run(path, out, max_new_tokens=4)
    recs = {r["id"]: r for r in read_jsonl(out)}
    assert set(recs) == {"long", "room", "banned", "fine", 6, "ok"}
    assert "exceeds the model's context length" in recs["long"]["error"]
    assert "max_new_tokens (8190)" in recs["room"]["error"]
    # Its batch failed in the sampler: every record was run again alone, and only it failed.
    assert "error" in recs["banned"] and recs["fine"]["completion_tokens"] >= 1
    assert "not valid UTF-8" in recs[6]["error"] and "duplicate id" in recs["ok"]["error"]


def test_parquet_in_and_out(inputs: Path, reference: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # JSONL in, Parquet out: the reference's records, with nulls for the absent fields (and
    # string ids: a Parquet column has one type, and the reference mixes ints and strings).
    out = inputs.parent / "ref.parquet"
    batch.run(inputs, out, max_new_tokens=MAX_NEW)
    back = [{k: v for k, v in g.items() if v is not None} for g in pq.read_table(out).to_pylist()]
    assert back == [dict(r, id=str(r["id"])) for r in read_jsonl(reference)]
    # The same records as Parquet in (one id type per column: strings here; a missing value
    # is a null, which means "not given"; logit_bias as a map) and JSONL out, against the
    # same records as JSONL in and Parquet out.
    rows = [dict(r, id=str(i)) for r, i in zip(RECORDS, IDS)]
    names = sorted({k for r in rows for k in r})
    types = {"logit_bias": pa.map_(pa.string(), pa.float64())}
    columns = {
        k: pa.array(
            [list(r[k].items()) if k == "logit_bias" and k in r else r.get(k) for r in rows],
            types.get(k),
        )
        for k in names
    }
    src = inputs.parent / "str-ids.parquet"
    pq.write_table(pa.table(columns), src)
    via_parquet = inputs.parent / "str-ids.jsonl"
    batch.run(src, via_parquet, max_new_tokens=4)
    src2 = write_jsonl(inputs.parent / "str-ids-in.jsonl", rows)
    via_jsonl = inputs.parent / "str-ids-out.parquet"
    batch.run(src2, via_jsonl, max_new_tokens=4)
    got = [
        {k: v for k, v in g.items() if v is not None} for g in pq.read_table(via_jsonl).to_pylist()
    ]
    assert got == read_jsonl(via_parquet)
    assert [g["id"] for g in got] == sorted(str(i) for i in IDS)
    assert sum("error" in g for g in got) == 2


def test_cli_writes_the_same_file_and_a_summary_line(
    inputs: Path, reference: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tokensampler.cli import main

    out = inputs.parent / "cli.jsonl"
    code = main(
        [
            "batch",
            str(inputs),
            "-o",
            str(out),
            "--max-new-tokens",
            str(MAX_NEW),
            "--batch-size",
            "4",
            "--cpus-per-worker",
            "1",
        ]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    assert out.read_bytes() == reference.read_bytes()
    line = err.strip().splitlines()[-1]
    assert line.startswith("[12 records (2 errors)") and "records/s" in line, line
    assert "tokens/s" in line and str(out) in line


# ==============================================================================================
# Ray Data: a local cluster of 2 CPUs
# ==============================================================================================


@pytest.fixture(scope="module")
def ray_cluster() -> Any:
    ray = pytest.importorskip("ray")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Ray's own, on start-up
        ray.init(
            num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR
        )
    yield ray
    ray.shutdown()


@pytest.mark.ray
def test_ray_two_workers_give_the_same_file(
    inputs: Path, reference: Path, ray_cluster: Any
) -> None:
    out = inputs.parent / "ray.jsonl"
    s = batch.run(inputs, out, max_new_tokens=MAX_NEW, ray=True, workers=2, batch_size=3)
    assert out.read_bytes() == reference.read_bytes()
    assert (s.records, s.errors, s.generated) == (12, 2, 12)


@pytest.mark.ray
def test_ray_resumes_an_interrupted_in_process_run(
    inputs: Path, reference: Path, ray_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = inputs.parent / "ray-resumed.jsonl"
    monkeypatch.setattr(batch.Worker, "run", _interrupted_run(at=2))
    with pytest.raises(KeyboardInterrupt):
        batch.run(inputs, out, max_new_tokens=MAX_NEW, batch_size=4)
    monkeypatch.undo()
    s = batch.run(inputs, out, max_new_tokens=MAX_NEW, ray=True, workers=2, resume=True)
    assert s.resumed == 2 + 4 and s.generated == 12 - 6
    assert out.read_bytes() == reference.read_bytes()
    assert os.listdir(inputs.parent).count("ray-resumed.jsonl.partial") == 0
