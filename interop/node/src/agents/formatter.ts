// FormatterAgent: lays out a writer's draft as Markdown.
import {
  FormatRequestSchema,
  FormattedTextSchema,
} from "@ravi-mesh/contract/ravi/examples/v1/examples_pb";

import { defineStatelessAgent, type AgentDefinition } from "../agent.js";
import { formatAgentId } from "../ids.js";

type Block = { kind: "heading" | "bullet" | "sources" | "text"; text: string };

/**
 * Turns a draft into Markdown: a first line ending with ":" becomes a "## "
 * heading (without the colon), "- " bullets stay bullets, a "Sources: ..."
 * line becomes an italic line; other lines stay as they are. Blocks of
 * different kinds are separated by a blank line.
 */
export function toMarkdown(draft: string): string {
  const lines = draft.split(/\r?\n/).map((l) => l.trimEnd());
  const blocks: Block[] = [];
  let first = true;
  for (const raw of lines) {
    const line = raw.trim();
    if (line === "") {
      continue;
    }
    if (first && line.endsWith(":") && !line.startsWith("- ")) {
      blocks.push({ kind: "heading", text: `## ${line.slice(0, -1).trim()}` });
    } else if (line.startsWith("- ")) {
      blocks.push({ kind: "bullet", text: `- ${line.slice(2).trim()}` });
    } else if (/^Sources:/.test(line)) {
      blocks.push({ kind: "sources", text: `_${line}_` });
    } else {
      blocks.push({ kind: "text", text: raw });
    }
    first = false;
  }
  let out = "";
  blocks.forEach((block, i) => {
    const previous = blocks[i - 1];
    if (previous !== undefined) {
      out += previous.kind === block.kind && block.kind !== "heading" && block.kind !== "sources" ? "\n" : "\n\n";
    }
    out += block.text;
  });
  return out;
}

/** The formatter agent type: FormatRequest -> FormattedText. */
export function formatterAgent(): AgentDefinition<undefined> {
  return defineStatelessAgent().on(FormatRequestSchema, FormattedTextSchema, (request, ctx) => ({
    text: request.style === "markdown" ? toMarkdown(request.text) : request.text,
    formatter: `${formatAgentId(ctx.id)} (node)`,
  }));
}
