package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// tracingConfigured reports whether traces are to be exported: an endpoint
// given by the flag or by the standard OTEL_* variables (and the SDK not
// disabled by OTEL_SDK_DISABLED=true).
func tracingConfigured(flagEndpoint string) bool {
	if flagEndpoint != "" {
		return true
	}
	if strings.EqualFold(strings.TrimSpace(os.Getenv("OTEL_SDK_DISABLED")), "true") {
		return false
	}
	return os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != "" || os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != ""
}

// newTracerProvider installs nothing and returns nil unless tracing is
// configured; then it returns an SDK tracer provider exporting over OTLP gRPC
// through a batch span processor. The exporter reads the OTEL_EXPORTER_OTLP_*
// variables itself (an http:// endpoint is plaintext); flagEndpoint, a URL
// such as http://127.0.0.1:4317, overrides them. The resource's service.name
// is the node id unless OTEL_SERVICE_NAME (or OTEL_RESOURCE_ATTRIBUTES) says
// otherwise; the sampler follows OTEL_TRACES_SAMPLER.
func newTracerProvider(ctx context.Context, nodeID, flagEndpoint string, logger *slog.Logger) (*sdktrace.TracerProvider, error) {
	if !tracingConfigured(flagEndpoint) {
		return nil, nil
	}
	var opts []otlptracegrpc.Option
	if flagEndpoint != "" {
		if !strings.Contains(flagEndpoint, "://") {
			flagEndpoint = "http://" + flagEndpoint
		}
		u, err := url.Parse(flagEndpoint)
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			return nil, fmt.Errorf("--otlp-endpoint: want a URL such as http://127.0.0.1:4317, got %q", flagEndpoint)
		}
		opts = append(opts, otlptracegrpc.WithEndpointURL(flagEndpoint))
	}
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		logger.Warn("opentelemetry", "err", err)
	}))
	exporter, err := otlptracegrpc.New(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("OTLP trace exporter: %w", err)
	}
	res, err := resource.New(ctx,
		resource.WithTelemetrySDK(),
		resource.WithAttributes(attribute.String("service.name", nodeID)),
		resource.WithFromEnv(), // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win
	)
	if err != nil {
		logger.Warn("tracing resource", "err", err)
	}
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exporter),
		sdktrace.WithResource(res),
	)
	logger.Info("exporting traces over OTLP gRPC", "service", serviceName(res, nodeID))
	return tp, nil
}

func serviceName(res *resource.Resource, fallback string) string {
	if v, ok := res.Set().Value("service.name"); ok {
		return v.AsString()
	}
	return fallback
}
