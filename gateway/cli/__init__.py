"""The caiasoft-gateway command and its subcommands."""
