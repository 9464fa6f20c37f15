"""Click commands: thin wrappers that parse options and call one library function."""
