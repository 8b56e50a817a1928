"""The generated stubs of weir.v1 (proto/weir/v1/*.proto); see generate.py."""
