"""Generated gRPC code (scripts/gen_proto.sh from proto/autothink/v1/); do not edit by hand."""
