#!/usr/bin/env node
// Command ravi-a2a-drive drives ravi's A2A gateway (`ravi serve --a2a` with the
// agents of tests/a2a/agents.py) with the official A2A JavaScript client,
// @a2a-js/sdk, over one binding: card discovery, a call to a plain agent, a
// ReAct task streamed through input-required to completed once approved, a
// rejection, a refused edit, tasks/get, tasks/cancel, and a dropped stream
// resumed with SubscribeToTask. It prints "ok <step>" per step and exits 1 on
// the first failure.
//
//	ravi-a2a-drive --server http://127.0.0.1:8000 --token T --binding JSONRPC|GRPC|HTTP+JSON

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { parseArgs } from "node:util";

import { Role, TaskState } from "@a2a-js/sdk";
import type { AgentCard, Message, Part, StreamResponse, Task } from "@a2a-js/sdk";
import {
  AgentCardResolver,
  type Client,
  ClientFactory,
  JsonRpcTransportFactory,
  type RequestOptions,
  RestTransportFactory,
} from "@a2a-js/sdk/client";
import { GrpcTransportFactory } from "@a2a-js/sdk/client/grpc";

type Data = Record<string, unknown>;

const { values } = parseArgs({
  options: {
    server: { type: "string" },
    token: { type: "string" },
    binding: { type: "string", default: "JSONRPC" },
  },
});
const server = required(values.server, "--server");
const token = required(values.token, "--token");
const binding = values.binding ?? "JSONRPC";
const options: RequestOptions = { serviceParameters: { Authorization: `Bearer ${token}` } };

function required(value: string | undefined, flag: string): string {
  if (!value) {
    throw new Error(`${flag} is required`);
  }
  return value;
}

function cardUrl(agentType: string): string {
  return `${server}/a2a/${agentType}/.well-known/agent-card.json`;
}

async function connect(agentType: string): Promise<Client> {
  const factory = new ClientFactory({
    transports: [new JsonRpcTransportFactory(), new RestTransportFactory(), new GrpcTransportFactory()],
    preferredTransports: [binding],
  });
  // The full card URL with an empty path: the card lives under the agent's path.
  return factory.createFromUrl(cardUrl(agentType), "");
}

function text(value: string): Part {
  return { content: { $case: "text", value }, metadata: undefined, filename: "", mediaType: "" };
}

function data(value: Data): Part {
  return { content: { $case: "data", value }, metadata: undefined, filename: "", mediaType: "" };
}

function message(parts: Part[], task?: Task, contextId = ""): Message {
  return {
    messageId: randomUUID(),
    contextId: task?.contextId ?? contextId,
    taskId: task?.id ?? "",
    role: Role.ROLE_USER,
    parts,
    metadata: undefined,
    extensions: [],
    referenceTaskIds: [],
  };
}

function request(parts: Part[], task?: Task) {
  return { tenant: "", message: message(parts, task), configuration: undefined, metadata: undefined };
}

async function collect(stream: AsyncGenerator<StreamResponse>): Promise<StreamResponse[]> {
  const events: StreamResponse[] = [];
  for await (const event of stream) {
    events.push(event);
  }
  return events;
}

function stateOf(event: StreamResponse): TaskState | undefined {
  const payload = event.payload;
  if (payload?.$case === "task") {
    return payload.value.status?.state;
  }
  if (payload?.$case === "statusUpdate") {
    return payload.value.status?.state;
  }
  return undefined;
}

function states(events: StreamResponse[]): TaskState[] {
  return events.map(stateOf).filter((s): s is TaskState => s !== undefined);
}

function dataOf(parts: Part[] | undefined): Data[] {
  const found: Data[] = [];
  for (const part of parts ?? []) {
    if (part.content?.$case === "data") {
      found.push(part.content.value as Data);
    }
  }
  return found;
}

function textOf(parts: Part[] | undefined): string {
  return (parts ?? [])
    .map((p) => (p.content?.$case === "text" ? p.content.value : ""))
    .filter((t) => t)
    .join("\n");
}

function firstTask(events: StreamResponse[]): Task {
  for (const event of events) {
    if (event.payload?.$case === "task") {
      return event.payload.value;
    }
  }
  throw new Error("the stream had no task");
}

function approvalOf(events: StreamResponse[]): Data {
  for (const event of [...events].reverse()) {
    const payload = event.payload;
    if (payload?.$case === "statusUpdate" && payload.value.status?.state === TaskState.TASK_STATE_INPUT_REQUIRED) {
      const [asked] = dataOf(payload.value.status.message?.parts);
      assert.equal(asked?.["kind"], "approval_request");
      return asked;
    }
  }
  throw new Error("no input-required update");
}

function resultText(events: StreamResponse[]): string {
  for (const event of events) {
    if (event.payload?.$case === "artifactUpdate") {
      const artifact = event.payload.value.artifact;
      assert.equal(artifact?.name, "result");
      return textOf(artifact?.parts);
    }
  }
  throw new Error("no result artifact");
}

async function untilApproval(client: Client, task: string): Promise<[Task, Data]> {
  const events = await collect(client.sendMessageStream(request([text(task)]), options));
  assert.equal(states(events).at(-1), TaskState.TASK_STATE_INPUT_REQUIRED);
  return [firstTask(events), approvalOf(events)];
}

async function step(name: string, body: () => Promise<void>): Promise<void> {
  await body();
  console.log(`ok ${name}`);
}

async function main(): Promise<void> {
  const assistant = await connect("assistant");
  const librarian = await connect("librarian");

  await step("discovery", async () => {
    assert.equal(assistant.transport.protocolName, binding);
    assert.equal(librarian.transport.protocolName, binding);
    const card: AgentCard = await AgentCardResolver.default.resolve(server);
    assert.equal(card.name, "assistant");
    assert.deepEqual(card.skills.map((s) => s.id).sort(), ["look_up", "send_report"]);
    const grpc = card.supportedInterfaces.find((i) => i.protocolBinding === "GRPC");
    assert.equal(grpc?.tenant, "assistant");
    assert.equal(card.securitySchemes["bearer"]?.scheme?.$case, "httpAuthSecurityScheme");
    const library = await AgentCardResolver.default.resolve(cardUrl("librarian"), "");
    assert.equal(library.skills[0]?.id, "ravi.examples.v1.SearchQuery");
  });

  await step("send to a plain agent", async () => {
    const query = { "@type": "ravi.examples.v1.SearchQuery", query: "approvals", limit: 2 };
    const result = await librarian.sendMessage(request([data(query)]), options);
    assert.ok("status" in result, "a task");
    const task = result as Task;
    assert.equal(task.status?.state, TaskState.TASK_STATE_COMPLETED);
    const [reply] = dataOf(task.artifacts[0]?.parts);
    assert.equal(reply?.["@type"], "ravi.examples.v1.SearchResult");
    assert.equal((reply?.["hits"] as Data[]).length, 2);
    await assert.rejects(
      librarian.sendMessage(request([data({ "@type": "no.such.Type" })]), options),
      /unknown message type/,
    );
  });

  await step("stream through input-required to completed", async () => {
    const events = await collect(assistant.sendMessageStream(request([text("restate approvals")]), options));
    const seen = states(events);
    assert.equal(seen[0], TaskState.TASK_STATE_SUBMITTED);
    assert.equal(seen.at(-1), TaskState.TASK_STATE_INPUT_REQUIRED);
    const task = firstTask(events);
    const asked = approvalOf(events);
    assert.equal(asked["tool"], "send_report");
    assert.equal((asked["arguments"] as Data)["to"], "team@example.com");
    const fetched = await assistant.getTask({ tenant: "", id: task.id }, options);
    assert.equal(fetched.status?.state, TaskState.TASK_STATE_INPUT_REQUIRED);
    const done = await collect(assistant.sendMessageStream(request([text("approve")], task), options));
    assert.equal(states(done).at(-1), TaskState.TASK_STATE_COMPLETED);
    assert.match(resultText(done), /^Done\. Report sent to team@example\.com/);
    const finished = await assistant.getTask({ tenant: "", id: task.id }, options);
    assert.equal(finished.status?.state, TaskState.TASK_STATE_COMPLETED);
  });

  await step("reject", async () => {
    const [task] = await untilApproval(assistant, "grpc");
    const answer = data({ action: "reject", reason: "not today" });
    const done = await collect(assistant.sendMessageStream(request([answer], task), options));
    assert.equal(states(done).at(-1), TaskState.TASK_STATE_COMPLETED);
    assert.match(resultText(done), /^I did not send the report\..*not today/s);
  });

  await step("edit with bad arguments is refused", async () => {
    const [task, asked] = await untilApproval(assistant, "local");
    await assert.rejects(
      collect(assistant.sendMessageStream(request([data({ action: "edit", arguments: { to: 5 } })], task), options)),
      /do not validate/,
    );
    const fetched = await assistant.getTask({ tenant: "", id: task.id }, options);
    assert.equal(fetched.status?.state, TaskState.TASK_STATE_INPUT_REQUIRED);
    const edit = data({
      action: "edit",
      request_id: asked["request_id"],
      arguments: { to: "ops@example.com", summary: "edited" },
    });
    const result = (await assistant.sendMessage(request([edit], task), options)) as Task;
    assert.equal(result.status?.state, TaskState.TASK_STATE_COMPLETED);
    assert.match(textOf(result.artifacts[0]?.parts), /Report sent to ops@example\.com/);
  });

  await step("cancel", async () => {
    const [task] = await untilApproval(assistant, "approval");
    const canceled = await assistant.cancelTask({ tenant: "", id: task.id, metadata: undefined }, options);
    assert.equal(canceled.status?.state, TaskState.TASK_STATE_CANCELED);
    const fetched = await assistant.getTask({ tenant: "", id: task.id }, options);
    assert.equal(fetched.status?.state, TaskState.TASK_STATE_CANCELED);
  });

  await step("resubscribe after dropping the stream", async () => {
    const stream = assistant.sendMessageStream(request([text("restate")]), options);
    const first = await stream.next();
    await stream.return(undefined);
    assert.ok(!first.done && first.value.payload?.$case === "task");
    const task = first.value.payload.value;
    const deadline = Date.now() + 30_000;
    while ((await assistant.getTask({ tenant: "", id: task.id }, options)).status?.state !== TaskState.TASK_STATE_INPUT_REQUIRED) {
      assert.ok(Date.now() < deadline, "the task never waited for its approval");
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    const resumed = assistant.resubscribeTask({ tenant: "", id: task.id }, options);
    const snapshot = await resumed.next();
    assert.ok(!snapshot.done && snapshot.value.payload?.$case === "task");
    assert.equal(snapshot.value.payload.value.status?.state, TaskState.TASK_STATE_INPUT_REQUIRED);
    const rest = collect(resumed);
    const approved = await assistant.sendMessage(request([text("approve")], task), options);
    assert.equal((approved as Task).status?.state, TaskState.TASK_STATE_COMPLETED);
    const later = await rest;
    assert.equal(states(later).at(-1), TaskState.TASK_STATE_COMPLETED);
    assert.match(resultText(later), /^Done\. Report sent/);
  });
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    console.error(error instanceof Error ? (error.stack ?? error.message) : error);
    process.exit(1);
  },
);
