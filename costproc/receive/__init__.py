"""Receive: OTLP requests in, compact `SpanRecord`s out."""
