"""``--traces``: the tracing option of both command lines, and the OpenTelemetry SDK it sets up.

OpenTelemetry is the optional extra ``tether[otel]``. Nothing here imports it until tracing
is turned on, so a gateway or worker without the extra starts, and runs, exactly as before.

The option follows OpenTelemetry's own environment variables, so the usual deployment
settings work unchanged: ``OTEL_TRACES_EXPORTER`` (``otlp``, ``console`` or ``none``) picks
the exporter when ``--traces`` / ``TETHER_TRACES`` is not given, and setting
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) alone turns OTLP export on. The
SDK and the exporter read the rest themselves (``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``, ``OTEL_EXPORTER_OTLP_HEADERS``...).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cmdline.options import add_option
from protocol.errors import InvalidInput

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

#: What ``--traces`` accepts: no tracing, OTLP over HTTP, or one JSON line per span on stdout.
EXPORTERS = ("none", "otlp", "console")

INSTALL_HINT = "install the extra: pip install 'tether[otel]'"


def default_exporter(environ: Mapping[str, str] | None = None) -> str:
    """The exporter OpenTelemetry's variables ask for; ``none`` when they say nothing."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return "none"
    named = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if named:
        return named.split(",")[0].strip()
    if env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return "otlp"
    return "none"


def add_trace_options(parser: argparse.ArgumentParser | Any,
                      environ: Mapping[str, str] | None) -> None:
    """Add ``--traces`` to a parser (its default follows ``OTEL_*``, see the module)."""
    add_option(parser, "--traces", env="TRACES", environ=environ, choices=EXPORTERS,
               default=default_exporter(environ),
               help="export OpenTelemetry spans: 'otlp' (to OTEL_EXPORTER_OTLP_ENDPOINT, "
               "default http://localhost:4318), 'console' (a JSON line per span on stdout) "
               "or 'none'; by default what OTEL_TRACES_EXPORTER says, or 'otlp' when "
               "OTEL_EXPORTER_OTLP_ENDPOINT is set. Needs the extra tether[otel]; "
               "OTEL_SERVICE_NAME names the service")


def tracer_provider(exporter: str, *, service_name: str,
                    span_exporter: SpanExporter | None = None) -> TracerProvider:
    """An SDK tracer provider exporting with ``exporter`` (or to ``span_exporter``, in tests).

    Raises:
        InvalidInput: the extra is not installed, or the exporter is unknown or unusable.
    """
    if exporter not in EXPORTERS:
        raise InvalidInput(f"traces exporter {exporter!r} is not supported; use one of "
                           f"{', '.join(EXPORTERS)} (--traces or OTEL_TRACES_EXPORTER)")
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SimpleSpanProcessor,
        )
    except ImportError as exc:
        raise InvalidInput(f"--traces {exporter} needs OpenTelemetry ({exc}); "
                           f"{INSTALL_HINT}") from None
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": service_name}))
    provider = TracerProvider(resource=resource)
    if span_exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    elif exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(
            out=sys.stdout, formatter=lambda span: span.to_json(indent=None) + "\n")))
    elif exporter == "otlp":
        provider.add_span_processor(BatchSpanProcessor(_otlp_exporter()))
    return provider


def _otlp_exporter() -> SpanExporter:
    protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf")
    try:
        if protocol.strip() == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcExporter,
            )
            exporter: SpanExporter = GrpcExporter()
            return exporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        package = ("opentelemetry-exporter-otlp-proto-grpc" if protocol.strip() == "grpc"
                   else "opentelemetry-exporter-otlp-proto-http")
        raise InvalidInput(f"OTLP export ({protocol}) needs {package} ({exc}); "
                           f"{INSTALL_HINT}") from None
    return OTLPSpanExporter()
