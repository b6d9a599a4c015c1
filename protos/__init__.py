"""Wire definitions (protobuf) and their generated code."""
