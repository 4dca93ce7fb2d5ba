// Small async helpers shared by the node, its peers and the client.

/** The longest delay setTimeout accepts (about 24.8 days). */
export const MAX_TIMER_MS = 2_147_483_647;

/** Resolves after `ms`, or rejects with the signal's reason once it aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted === true) {
      reject(signal.reason);
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, Math.min(Math.max(ms, 0), MAX_TIMER_MS));
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/**
 * AsyncQueue is an unbounded queue read by one async iterator: the producer
 * pushes, ends or fails it; the consumer iterates until it ends or the signal
 * passed to `iterate` aborts.
 */
export class AsyncQueue<T> {
  private readonly items: T[] = [];
  private waiter: (() => void) | undefined;
  private ended = false;
  private failure: { error: unknown } | undefined;

  get size(): number {
    return this.items.length;
  }

  get closed(): boolean {
    return this.ended || this.failure !== undefined;
  }

  push(item: T): void {
    if (this.closed) {
      return;
    }
    this.items.push(item);
    this.wake();
  }

  end(): void {
    this.ended = true;
    this.wake();
  }

  fail(error: unknown): void {
    if (this.closed) {
      return;
    }
    this.failure = { error };
    this.wake();
  }

  private wake(): void {
    const waiter = this.waiter;
    this.waiter = undefined;
    waiter?.();
  }

  async *iterate(signal?: AbortSignal): AsyncGenerator<T> {
    const onAbort = (): void => this.wake();
    signal?.addEventListener("abort", onAbort);
    try {
      for (;;) {
        const item = this.items.shift();
        if (item !== undefined) {
          yield item;
          continue;
        }
        if (this.failure !== undefined) {
          throw this.failure.error;
        }
        if (this.ended || signal?.aborted === true) {
          return;
        }
        await new Promise<void>((resolve) => {
          this.waiter = resolve;
        });
      }
    } finally {
      signal?.removeEventListener("abort", onAbort);
    }
  }
}

/** Returns the error's type name, as reported in ErrorInfo metadata "exception_type". */
export function errorTypeName(error: unknown): string {
  if (error instanceof Error) {
    const ctor = (error as { constructor?: { name?: unknown } }).constructor;
    const ctorName = typeof ctor?.name === "string" ? ctor.name : "";
    if (error.name !== "" && error.name !== "Error") {
      return error.name;
    }
    return ctorName !== "" ? ctorName : error.name;
  }
  if (error === null) {
    return "null";
  }
  return typeof error;
}

/** Returns the error's message, as reported in ErrorInfo metadata "exception_message". */
export function errorMessage(error: unknown): string {
  if (error instanceof Error) {
    return error.message;
  }
  return String(error);
}
