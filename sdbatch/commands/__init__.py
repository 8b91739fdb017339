"""sdbatch-tools subcommands: one module each, discovered by sdbatch.tools."""
