// Installing OpenTelemetry tracing for a node process from the standard OTEL_*
// settings (docs/operations.md, "Tracing"): an SDK TracerProvider exporting
// over OTLP/gRPC through a batch span processor, installed only when an
// endpoint is configured. The SDK and the exporter are loaded only then.
import type { TracerProvider } from "@opentelemetry/api";

import { LANGUAGE } from "./node.js";

/** The variables that name an OTLP endpoint for traces. */
export const OTLP_ENDPOINT_VARIABLES = ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] as const;

export interface TracingSetupOptions {
  /** The node id: the service.name unless OTEL_SERVICE_NAME is set, and ravi.node.id. */
  nodeId: string;
  /** The OTLP gRPC endpoint (http://127.0.0.1:4317); the OTEL_* variables when unset. */
  endpoint?: string | undefined;
  /** The environment to read (default process.env). */
  env?: Readonly<Record<string, string | undefined>> | undefined;
  /** Registers the provider, the W3C propagator and an AsyncLocalStorage context manager globally (default true). */
  register?: boolean | undefined;
}

/** What `setupTracing` installed. */
export interface InstalledTracing {
  /** The SDK provider: pass it to RaviNode as `tracerProvider`. */
  readonly tracerProvider: TracerProvider;
  /** The endpoint spans go to, when it was given (else the exporter read it from OTEL_*). */
  readonly endpoint: string | undefined;
  /**
   * Flushes the spans still buffered and stops the exporter, within
   * `timeoutMs` (default 5 s); resolves with false when that passed first.
   */
  shutdown(timeoutMs?: number): Promise<boolean>;
}

function nonEmpty(value: string | undefined): string | undefined {
  const trimmed = value?.trim();
  return trimmed === undefined || trimmed === "" ? undefined : trimmed;
}

/** True when an OTLP traces endpoint is configured, by the option or the environment. */
export function tracingConfigured(endpoint?: string, env: Readonly<Record<string, string | undefined>> = process.env): boolean {
  return nonEmpty(endpoint) !== undefined || OTLP_ENDPOINT_VARIABLES.some((name) => nonEmpty(env[name]) !== undefined);
}

/**
 * Installs an SDK TracerProvider that exports over OTLP/gRPC (batch span
 * processor) when an endpoint is configured, by `endpoint` or by
 * OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT. The rest
 * of the OTEL_* settings (sampler, batch sizes, headers, resource attributes)
 * are read by the SDK. Resolves with undefined, having loaded nothing, when no
 * endpoint is configured.
 */
export async function setupTracing(options: TracingSetupOptions): Promise<InstalledTracing | undefined> {
  const env = options.env ?? process.env;
  const endpoint = nonEmpty(options.endpoint);
  if (!tracingConfigured(endpoint, env)) {
    return undefined;
  }
  const [{ NodeTracerProvider }, { BatchSpanProcessor }, { OTLPTraceExporter }, resources] = await Promise.all([
    import("@opentelemetry/sdk-trace-node"),
    import("@opentelemetry/sdk-trace-base"),
    import("@opentelemetry/exporter-trace-otlp-grpc"),
    import("@opentelemetry/resources"),
  ]);
  const resource = resources
    .defaultResource()
    .merge(resources.detectResources({ detectors: [resources.envDetector] }))
    .merge(
      resources.resourceFromAttributes({
        "service.name": nonEmpty(env["OTEL_SERVICE_NAME"]) ?? options.nodeId,
        "ravi.node.id": options.nodeId,
        "ravi.language": LANGUAGE,
      }),
    );
  const exporter = new OTLPTraceExporter(endpoint === undefined ? {} : { url: endpoint });
  const provider = new NodeTracerProvider({ resource, spanProcessors: [new BatchSpanProcessor(exporter)] });
  if (options.register ?? true) {
    provider.register();
  }
  let stopping: Promise<boolean> | undefined;
  return {
    tracerProvider: provider,
    endpoint,
    shutdown: (timeoutMs = 5_000) => {
      stopping ??= new Promise<boolean>((resolve) => {
        const timer = setTimeout(() => resolve(false), timeoutMs);
        const done = (flushed: boolean) => (): void => {
          clearTimeout(timer);
          resolve(flushed);
        };
        provider.shutdown().then(done(true), done(false));
      });
      return stopping;
    },
  };
}
