"""The demo agents: an orchestrator asks a searcher, a writer and a reviewer.

All messages are `ravi.examples.v1` protobuf messages, so any of these agents
can be replaced by one written in Go or Node. The searcher searches the
project's own documentation; the writer and reviewer are deterministic, so the
demo's conversation is the same on every run.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ravi import AgentId, BaseAgent, MessageContext, TopicId, message_handler
from ravi.errors import AgentTypeNotFound
from ravi.examples.v1.examples_pb2 import (
    Draft,
    FormatRequest,
    ProgressEvent,
    ReviewRequest,
    ReviewVerdict,
    SearchHit,
    SearchQuery,
    SearchResult,
    Task,
    TaskResult,
    WriteRequest,
)

PROGRESS = "progress"
MAX_REVISIONS = 3
_WORD = re.compile(r"[a-z0-9_]+")
_STOPWORDS = frozenset(
    {"a", "an", "and", "are", "as", "at", "be", "by", "does", "for", "from", "how", "in", "is"}
    | {"it", "of", "on", "or", "the", "this", "to", "what", "when", "which", "with"}
)


def _terms(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS and len(w) > 1]


@dataclass(frozen=True)
class _Passage:
    source: str
    text: str
    terms: Counter[str]


class SearchAgent(BaseAgent):
    """SearchAgent ranks the paragraphs of a folder of Markdown files by tf-idf."""

    def __init__(self, corpus: Path) -> None:
        self.passages: list[_Passage] = []
        files = sorted(corpus.glob("*.md")) if corpus.is_dir() else [corpus]
        for path in files:
            for line, text in _paragraphs(path.read_text()):
                self.passages.append(_Passage(f"{path.name}:{line}", text, Counter(_terms(text))))
        documents = len(self.passages) or 1
        frequency = Counter(t for p in self.passages for t in p.terms)
        self.idf = {t: math.log(1 + documents / n) for t, n in frequency.items()}

    @message_handler
    async def on_query(self, query: SearchQuery, ctx: MessageContext) -> SearchResult:
        wanted = _terms(query.query)
        scored = sorted(
            (
                (
                    sum(p.terms[t] * self.idf.get(t, 0.0) for t in wanted)
                    / math.sqrt(len(p.terms)),
                    p,
                )
                for p in self.passages
            ),
            key=lambda pair: -pair[0],
        )
        hits = [
            SearchHit(source=p.source, snippet=_first_sentences(p.text), score=round(score, 3))
            for score, p in scored[: query.limit or 3]
            if score > 0
        ]
        return SearchResult(query=query.query, hits=hits, searcher=who(self))


def _paragraphs(markdown: str) -> list[tuple[int, str]]:
    """The prose paragraphs of a Markdown text with their first line numbers.

    Code blocks, tables and headings are left out: they make poor answers.
    """
    found: list[tuple[int, str]] = []
    block: list[str] = []
    start = 0
    fenced = False
    for number, raw in enumerate([*markdown.splitlines(), ""], start=1):
        line = raw.strip()
        if line.startswith("```"):
            fenced = not fenced
            line = ""
        if fenced or not line or line.startswith(("#", "|")):
            text = " ".join(block)
            if len(text) > 60:
                found.append((start, text))
            block = []
            continue
        if not block:
            start = number
        block.append(re.sub(r"^([-*]|\d+\.)\s+", "", line))
    return found


def _first_sentences(text: str, limit: int = 220) -> str:
    sentences = re.split(r"(?<=[.!?])\s+", text)
    out = ""
    for sentence in sentences:
        if out and len(out) + len(sentence) > limit:
            break
        out = f"{out} {sentence}".strip()
    return out[:limit]


class WriterAgent(BaseAgent):
    """WriterAgent turns notes into a short draft, and revises it on feedback."""

    def __init__(self) -> None:
        self.revisions = 0

    @message_handler
    async def on_write(self, request: WriteRequest, ctx: MessageContext) -> Draft:
        self.revisions += 1
        notes = [re.sub(r"\s*\[[^\]]+\]$", "", n) for n in request.notes]
        lines = [f"{request.topic.strip().rstrip('?')}:"]
        lines += [f"- {note}" for note in notes]
        if any("cite" in f for f in request.feedback):
            sources = sorted({m.group(1) for n in request.notes for m in [_SOURCE.search(n)] if m})
            lines.append(f"Sources: {', '.join(sources)}")
        return Draft(text="\n".join(lines), revision=self.revisions, author=who(self))


_SOURCE = re.compile(r"\[([^\]]+)\]$")


class ReviewAgent(BaseAgent):
    """ReviewAgent approves a draft that cites its sources and stays short."""

    @message_handler
    async def on_review(self, request: ReviewRequest, ctx: MessageContext) -> ReviewVerdict:
        comments = []
        if "Sources:" not in request.draft.text:
            comments.append("cite the sources you used")
        words = len(request.draft.text.split())
        if words > 160:
            comments.append(f"shorten it: {words} words, at most 160")
        return ReviewVerdict(
            approved=not comments,
            comments=comments or ["clear, sourced and short: approved"],
            reviewer=who(self),
        )


class OrchestratorAgent(BaseAgent):
    """OrchestratorAgent runs a Task: search, write, review until approved."""

    @message_handler
    async def on_task(self, task: Task, ctx: MessageContext) -> TaskResult:
        topic = TopicId(PROGRESS, task.thread_id)
        steps = 0

        async def progress(
            stage: str, detail: str, handled_by: str = "", millis: float = 0
        ) -> None:
            event = ProgressEvent(
                thread_id=task.thread_id,
                stage=stage,
                detail=detail,
                agent=str(self.id),
                handled_by=handled_by,
                millis=millis,
            )
            await self.publish_message(event, topic)

        await progress("search", f"searching the docs for {task.content!r}")
        started = time.perf_counter()
        found = await self.send_message(
            SearchQuery(query=task.content, limit=3), AgentId("searcher", "docs")
        )
        steps += 1
        await progress("search", f"{len(found.hits)} passages", found.searcher, _ms_since(started))
        notes = [f"{hit.snippet} [{hit.source}]" for hit in found.hits]

        feedback: list[str] = []
        draft = Draft()
        for _ in range(MAX_REVISIONS):
            started = time.perf_counter()
            draft = await self.send_message(
                WriteRequest(topic=task.content, notes=notes, feedback=feedback),
                AgentId("writer", task.thread_id),
            )
            steps += 1
            await progress("write", f"draft {draft.revision}", draft.author, _ms_since(started))
            started = time.perf_counter()
            verdict = await self.send_message(
                ReviewRequest(draft=draft, criteria=["cites sources", "at most 160 words"]),
                AgentId("reviewer", "default"),
            )
            steps += 1
            outcome = "approved" if verdict.approved else "changes requested"
            await progress(
                "review",
                f"{outcome}: {'; '.join(verdict.comments)}",
                verdict.reviewer,
                _ms_since(started),
            )
            if verdict.approved:
                break
            feedback = list(verdict.comments)
        answer = draft.text
        started = time.perf_counter()
        try:
            formatted = await self.send_message(
                FormatRequest(text=draft.text, style="markdown"),
                AgentId("formatter", task.thread_id),
            )
        except AgentTypeNotFound:
            pass  # no formatter in this deployment: the draft is the answer
        else:
            steps += 1
            answer = formatted.text
            await progress("format", "as markdown", formatted.formatter, _ms_since(started))
        await progress("done", f"answer ready after {steps} hops")
        return TaskResult(thread_id=task.thread_id, content=answer, steps=steps)


class ProgressPrinter(BaseAgent):
    """ProgressPrinter prints the progress events of a thread as they arrive."""

    lines: ClassVar[list[str]] = []

    events: ClassVar[list[ProgressEvent]] = []
    finished: ClassVar[asyncio.Event] = asyncio.Event()

    @message_handler
    async def on_progress(self, event: ProgressEvent, ctx: MessageContext) -> None:
        ProgressPrinter.events.append(event)
        if event.stage == "done":
            ProgressPrinter.finished.set()
        line = f"  [{event.stage:<6}] {event.detail}"
        if event.handled_by:
            line += f"  <- {event.handled_by}, {event.millis:.2f} ms"
        ProgressPrinter.lines.append(line)
        print(line, flush=True)


def who(agent: BaseAgent) -> str:
    """How the demo names an agent in its transcript: id, node and language."""
    node = getattr(agent.runtime, "node_id", None)
    return f"{agent.id} on {node} (python)" if node else f"{agent.id} (python)"


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
