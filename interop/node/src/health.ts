// grpc.health.v1.Health: Check, Watch and List over the node's serving status.
import type { ServiceImpl } from "@connectrpc/connect";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  Health,
  HealthCheckResponse_ServingStatus as ServingStatus,
  type HealthCheckResponse,
} from "@ravi-mesh/contract/grpc/health/v1/health_pb";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { HealthCheckResponseSchema } from "@ravi-mesh/contract/grpc/health/v1/health_pb";

import { AsyncQueue } from "./util.js";

export { ServingStatus };

/** HealthState holds the serving status of each service name and notifies watchers. */
export class HealthState {
  private readonly statuses = new Map<string, ServingStatus>();
  private readonly watchers = new Set<{ service: string; queue: AsyncQueue<ServingStatus> }>();

  set(service: string, status: ServingStatus): void {
    if (this.statuses.get(service) === status) {
      return;
    }
    this.statuses.set(service, status);
    for (const watcher of this.watchers) {
      if (watcher.service === service) {
        watcher.queue.push(status);
      }
    }
  }

  get(service: string): ServingStatus | undefined {
    return this.statuses.get(service);
  }

  all(): ReadonlyMap<string, ServingStatus> {
    return this.statuses;
  }

  /** Ends every Watch stream (after the last status was queued). */
  closeWatchers(): void {
    for (const watcher of this.watchers) {
      watcher.queue.end();
    }
  }

  watch(service: string, signal: AbortSignal): AsyncGenerator<ServingStatus> {
    const queue = new AsyncQueue<ServingStatus>();
    const watcher = { service, queue };
    queue.push(this.statuses.get(service) ?? ServingStatus.SERVICE_UNKNOWN);
    this.watchers.add(watcher);
    const watchers = this.watchers;
    return (async function* () {
      try {
        yield* queue.iterate(signal);
      } finally {
        watchers.delete(watcher);
      }
    })();
  }
}

/** The Health service implementation over a HealthState. */
export function healthService(state: HealthState): ServiceImpl<typeof Health> {
  return {
    check(request): MessageInitShape<typeof HealthCheckResponseSchema> {
      const status = state.get(request.service);
      if (status === undefined) {
        throw new ConnectError(`unknown service ${JSON.stringify(request.service)}`, Code.NotFound);
      }
      return { status };
    },
    async *watch(request, ctx): AsyncGenerator<MessageInitShape<typeof HealthCheckResponseSchema>> {
      for await (const status of state.watch(request.service, ctx.signal)) {
        yield { status };
      }
    },
    list() {
      const statuses: Record<string, MessageInitShape<typeof HealthCheckResponseSchema>> = {};
      for (const [service, status] of state.all()) {
        statuses[service] = { status };
      }
      return { statuses };
    },
  };
}

export type { HealthCheckResponse };
