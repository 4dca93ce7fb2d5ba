// RaviError: the error every ravi operation fails with, and its mapping to and
// from gRPC status + google.rpc.ErrorInfo (domain "ravi.mesh.v1").
import { Code, ConnectError } from "@connectrpc/connect";
import { ErrorInfoSchema } from "@ravi-mesh/contract/google/rpc/error_details_pb";
import { ErrorReason } from "@ravi-mesh/contract/ravi/mesh/v1/errors_pb";

import { didYouMean } from "./hints.js";
import { errorMessage, errorTypeName } from "./util.js";

export { Code } from "@connectrpc/connect";

/** The ErrorInfo domain of every ravi failure. */
export const ERROR_DOMAIN = "ravi.mesh.v1";

/** The ErrorReason value names without their "ERROR_REASON_" prefix. */
export type ReasonName = Exclude<keyof typeof ErrorReason, "UNSPECIFIED">;

const REASON_NAMES: ReadonlySet<string> = new Set(
  Object.keys(ErrorReason).filter((k) => Number.isNaN(Number(k)) && k !== "UNSPECIFIED"),
);

/** True when `name` is an ErrorReason name without prefix (for example "NO_HANDLER"). */
export function isReasonName(name: string): name is ReasonName {
  return REASON_NAMES.has(name);
}

/** The upper-case gRPC name of a code ("NOT_FOUND"), as printed by the CLI. */
export function codeName(code: Code): string {
  const name = Code[code];
  return name === undefined ? `CODE_${code}` : name.replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

export interface RaviErrorOptions {
  /** The ErrorReason name, when the failure has one. */
  reason?: ReasonName | undefined;
  /** String details, carried as ErrorInfo.metadata. */
  metadata?: Readonly<Record<string, string>> | undefined;
  /** True when another node raised the error and it travelled here. */
  remote?: boolean | undefined;
  cause?: unknown;
}

/**
 * RaviError is thrown by handlers to fail a call with a chosen status, and by
 * the node and client for every failure. `code` is the gRPC status code,
 * `reason` the contract's ErrorReason name (if any), `metadata` the
 * ErrorInfo metadata.
 */
export class RaviError extends Error {
  readonly code: Code;
  readonly reason: ReasonName | undefined;
  readonly metadata: Readonly<Record<string, string>>;
  readonly remote: boolean;

  constructor(code: Code, message: string, options: RaviErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "RaviError";
    this.code = code;
    this.reason = options.reason;
    this.metadata = { ...(options.metadata ?? {}) };
    this.remote = options.remote ?? false;
  }

  /** "NOT_FOUND AGENT_TYPE_NOT_FOUND: message", as the CLI prints it. */
  describe(): string {
    const reason = this.reason === undefined ? "" : ` ${this.reason}`;
    return `${codeName(this.code)}${reason}: ${this.message}`;
  }
}

/**
 * Builds the RaviError a handler's thrown value becomes: a RaviError keeps its
 * code and reason (none if it has none), anything else is UNKNOWN with reason
 * HANDLER_FAILED, as errors.proto says.
 */
export function handlerFailure(error: unknown, agentType: string): RaviError {
  if (error instanceof RaviError) {
    if (error.reason !== undefined) {
      return error;
    }
    // A handler's failure with a code of its own keeps the code and carries
    // HANDLER_FAILED like any other (errors.proto).
    return new RaviError(wireCode(error.code), error.message, {
      reason: "HANDLER_FAILED",
      metadata: { ...error.metadata, exception_type: errorTypeName(error), exception_message: error.message, agent_type: agentType },
      remote: error.remote,
      cause: error,
    });
  }
  if (error instanceof ConnectError) {
    return handlerFailure(fromConnectError(error), agentType);
  }
  return new RaviError(Code.Unknown, `handler of ${agentType} threw ${errorTypeName(error)}: ${errorMessage(error)}`, {
    reason: "HANDLER_FAILED",
    metadata: {
      exception_type: errorTypeName(error),
      exception_message: errorMessage(error),
      agent_type: agentType,
    },
    cause: error,
  });
}

/** The code a status can carry: anything outside 1..16 is UNKNOWN. */
export function wireCode(code: number): Code {
  return Number.isInteger(code) && code >= 1 && code <= 16 ? (code as Code) : Code.Unknown;
}

/**
 * Gives a failure of a Send the ErrorInfo metadata every reason carries
 * (errors.proto): the node, the addressed agent type and the message type. A
 * failure decided by another node keeps what that node wrote.
 */
export function annotated(error: RaviError, nodeId: string, agentType: string, messageType: string): RaviError {
  if (error.reason === undefined) {
    return error;
  }
  const metadata: Record<string, string> = { node_id: nodeId };
  if (error.reason !== "BAD_ID") {
    metadata["agent_type"] = agentType;
  }
  if (messageType !== "") {
    metadata["message_type"] = messageType;
  }
  return new RaviError(error.code, error.message, {
    reason: error.reason,
    metadata: { ...metadata, ...error.metadata },
    remote: error.remote,
    cause: error.cause,
  });
}

/** Converts a RaviError into the ConnectError the server returns (ErrorInfo when it has a reason). */
export function toConnectError(error: RaviError): ConnectError {
  const details =
    error.reason === undefined
      ? []
      : [
          {
            desc: ErrorInfoSchema,
            value: { reason: error.reason, domain: ERROR_DOMAIN, metadata: { ...error.metadata } },
          },
        ];
  return new ConnectError(error.message, wireCode(error.code), undefined, details, error);
}

/** Converts any error into a RaviError (ravi ErrorInfo kept, other errors as their code). */
export function fromConnectError(error: ConnectError, remote = true): RaviError {
  const info = error.findDetails(ErrorInfoSchema).find((d) => d.domain === ERROR_DOMAIN);
  const reason = info !== undefined && isReasonName(info.reason) ? info.reason : undefined;
  return new RaviError(error.code, error.rawMessage, {
    reason,
    metadata: info?.metadata ?? {},
    remote,
    cause: error,
  });
}

/** Any thrown value as a RaviError: RaviErrors as they are, ConnectErrors mapped, others UNKNOWN. */
export function asRaviError(error: unknown): RaviError {
  if (error instanceof RaviError) {
    return error;
  }
  if (error instanceof ConnectError) {
    return fromConnectError(error);
  }
  return new RaviError(Code.Unknown, errorMessage(error), { cause: error });
}

/** Shorthands for the errors of the contract's table. */
export const errors = {
  badId: (message: string): RaviError => new RaviError(Code.InvalidArgument, message, { reason: "BAD_ID" }),
  badPayload: (message: string, metadata?: Record<string, string>): RaviError =>
    new RaviError(Code.InvalidArgument, message, { reason: "BAD_PAYLOAD", metadata }),
  /** Lists the `known` types (this node's and its peers') and the nearest of them. */
  agentTypeNotFound: (agentType: string, nodeId: string, known: readonly string[] = []): RaviError => {
    const listed = [...new Set(known)].sort();
    return new RaviError(
      Code.NotFound,
      `no node hosts agent type "${agentType}"${didYouMean(agentType, listed)}; known types: ${listed.join(", ") || "none"} (asked node ${nodeId})`,
      { reason: "AGENT_TYPE_NOT_FOUND", metadata: { agent_type: agentType, node_id: nodeId } },
    );
  },
  /** Lists the message types the agent type handles. */
  noHandler: (agentType: string, messageType: string, handled: readonly string[] = []): RaviError =>
    new RaviError(
      Code.Unimplemented,
      `agent type "${agentType}" has no handler for ${messageType} (it handles ${[...handled].sort().join(", ") || "nothing"})`,
      { reason: "NO_HANDLER", metadata: { agent_type: agentType, message_type: messageType } },
    ),
  reentrantCall: (agent: string): RaviError =>
    new RaviError(Code.FailedPrecondition, `${agent} is waiting for this call's reply: delivering it would deadlock`, {
      reason: "REENTRANT_CALL",
      metadata: { agent_type: agent.split("/")[0] ?? agent },
    }),
  forwardingLoop: (nodeId: string): RaviError =>
    new RaviError(Code.FailedPrecondition, `the request already passed through node ${nodeId}`, {
      reason: "FORWARDING_LOOP",
      metadata: { node_id: nodeId },
    }),
  hopLimit: (nodeId: string, limit: number): RaviError =>
    new RaviError(Code.FailedPrecondition, `forwarding from node ${nodeId} would exceed the hop limit of ${limit}`, {
      reason: "HOP_LIMIT_EXCEEDED",
      metadata: { node_id: nodeId },
    }),
  /** `nodeId` decided that the peer(s) at `peerAddress` cannot be reached. */
  peerUnavailable: (nodeId: string, peerAddress: string, message: string): RaviError =>
    new RaviError(Code.Unavailable, message, {
      reason: "PEER_UNAVAILABLE",
      metadata: { node_id: nodeId, peer_address: peerAddress },
    }),
  mailboxFull: (agent: string, capacity: number): RaviError =>
    new RaviError(Code.ResourceExhausted, `the mailbox of ${agent} holds ${capacity} messages already`, {
      reason: "MAILBOX_FULL",
      metadata: { agent_type: agent.split("/")[0] ?? agent },
    }),
  // What a publish delivery that waited for room until its deadline fails
  // with: the same status and reason as a send to a full mailbox (as in Python
  // and Go), so callers handle both alike.
  mailboxStayedFull: (agent: string, capacity: number): RaviError =>
    new RaviError(Code.ResourceExhausted, `mailbox of ${agent} stayed full (${capacity} messages) until the publish deadline`, {
      reason: "MAILBOX_FULL",
      metadata: { agent_type: agent.split("/")[0] ?? agent },
    }),
  deadlineExceeded: (what: string): RaviError => new RaviError(Code.DeadlineExceeded, `deadline exceeded ${what}`),
  cancelled: (what: string): RaviError => new RaviError(Code.Canceled, `cancelled ${what}`),
} as const;
