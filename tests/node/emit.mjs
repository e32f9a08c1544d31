// Emits a described workload through the OpenTelemetry Node.js SDK to an OTLP endpoint.
//
//   node emit.mjs --protocol http-json|grpc --url URL [--processor batch|simple] WORKLOAD.json
//
// WORKLOAD.json: {"t0": [seconds, nanos], "spans": [{"ref", "name", "kind", "start_ms",
// "end_ms", "parent" (a ref or null), "attributes", "error" (status message or null)}]}
// with parents listed before their children. Spans end in reverse order, children first,
// as they do in real code. Prints {"trace_ids": {ref: hex} of the roots, "spans_exported": n}
// and exits 0 when every export succeeded; otherwise prints the error and exits 1.

import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

import {
  DiagConsoleLogger,
  DiagLogLevel,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  diag,
  trace,
} from "@opentelemetry/api";
import { OTLPTraceExporter as GrpcExporter } from "@opentelemetry/exporter-trace-otlp-grpc";
import { OTLPTraceExporter as HttpJsonExporter } from "@opentelemetry/exporter-trace-otlp-http";
import { defaultResource, resourceFromAttributes } from "@opentelemetry/resources";
import {
  BasicTracerProvider,
  BatchSpanProcessor,
  SimpleSpanProcessor,
} from "@opentelemetry/sdk-trace-base";
import { ATTR_SERVICE_NAME } from "@opentelemetry/semantic-conventions";

const EXPORTERS = {
  "http-json": (url) => new HttpJsonExporter({ url, timeoutMillis: 10_000 }),
  grpc: (url) => new GrpcExporter({ url, timeoutMillis: 10_000 }),
};
const PROCESSORS = {
  batch: (exporter) => new BatchSpanProcessor(exporter),
  simple: (exporter) => new SimpleSpanProcessor(exporter),
};
const EXPORT_SUCCESS = 0; // ExportResultCode.SUCCESS

/** Delegates to an exporter and remembers every failed export, which the SDK only logs. */
class CheckedExporter {
  constructor(inner) {
    this.inner = inner;
    this.exported = 0;
    this.failures = [];
  }

  export(spans, resultCallback) {
    this.inner.export(spans, (result) => {
      if (result.code === EXPORT_SUCCESS) {
        this.exported += spans.length;
      } else {
        this.failures.push(result.error ?? new Error(`export failed with code ${result.code}`));
      }
      resultCallback(result);
    });
  }

  forceFlush() {
    return this.inner.forceFlush();
  }

  shutdown() {
    return this.inner.shutdown();
  }
}

function parseCommandLine() {
  const { values, positionals } = parseArgs({
    options: {
      protocol: { type: "string" },
      url: { type: "string" },
      processor: { type: "string", default: "batch" },
    },
    allowPositionals: true,
  });
  if (!(values.protocol in EXPORTERS)) {
    throw new Error(`--protocol must be one of ${Object.keys(EXPORTERS)}, got ${values.protocol}`);
  }
  if (!(values.processor in PROCESSORS)) {
    throw new Error(`--processor must be one of ${Object.keys(PROCESSORS)}, got ${values.processor}`);
  }
  if (!values.url) {
    throw new Error("--url is required");
  }
  if (positionals.length !== 1) {
    throw new Error("expected exactly one workload file");
  }
  return { ...values, workload: JSON.parse(readFileSync(positionals[0], "utf8")) };
}

/** An HrTime `ms` milliseconds after `t0`, exact to the nanosecond. */
function at([seconds, nanos], ms) {
  if (!Number.isInteger(ms) || ms < 0) {
    throw new Error(`span times are whole non-negative milliseconds, got ${ms}`);
  }
  const total = nanos + (ms % 1000) * 1_000_000;
  return [seconds + Math.floor(ms / 1000) + Math.floor(total / 1e9), total % 1e9];
}

function startSpans(tracer, { t0, spans }) {
  const started = new Map();
  const ended = [];
  for (const spec of spans) {
    const parent = spec.parent == null ? undefined : started.get(spec.parent);
    if (spec.parent != null && parent === undefined) {
      throw new Error(`span ${spec.ref}: parent ${spec.parent} is not listed before it`);
    }
    const kind = SpanKind[spec.kind ?? "INTERNAL"];
    if (typeof kind !== "number") {
      throw new Error(`span ${spec.ref}: unknown kind ${spec.kind}`);
    }
    const context = parent ? trace.setSpan(ROOT_CONTEXT, parent) : ROOT_CONTEXT;
    const options = {
      kind,
      attributes: spec.attributes ?? {},
      startTime: at(t0, spec.start_ms),
    };
    const span = tracer.startSpan(spec.name, options, context);
    if (spec.error != null) {
      span.setStatus({ code: SpanStatusCode.ERROR, message: spec.error });
    }
    started.set(spec.ref, span);
    ended.push([span, at(t0, spec.end_ms)]);
  }
  for (const [span, end] of ended.reverse()) {
    span.end(end);
  }
  const traceIds = {};
  for (const spec of spans.filter((s) => s.parent == null)) {
    traceIds[spec.ref] = started.get(spec.ref).spanContext().traceId;
  }
  return traceIds;
}

async function main() {
  const args = parseCommandLine();
  diag.setLogger(new DiagConsoleLogger(), DiagLogLevel.WARN);
  const exporter = new CheckedExporter(EXPORTERS[args.protocol](args.url));
  const provider = new BasicTracerProvider({
    resource: defaultResource().merge(resourceFromAttributes({ [ATTR_SERVICE_NAME]: "checkout" })),
    spanProcessors: [PROCESSORS[args.processor](exporter)],
  });
  const traceIds = startSpans(provider.getTracer("costproc.node-interop"), args.workload);
  await provider.forceFlush();
  await provider.shutdown();
  if (exporter.failures.length > 0) {
    throw exporter.failures[0];
  }
  process.stdout.write(`${JSON.stringify({ trace_ids: traceIds, spans_exported: exporter.exported })}\n`);
}

main().catch((error) => {
  process.stderr.write(`emit.mjs: ${error?.stack ?? error}\n`);
  process.exitCode = 1;
});
