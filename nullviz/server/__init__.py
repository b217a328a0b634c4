"""What a server (or a command-line process) sets up once: settings from the environment, workspaces,
upload limits, and process tuning — torch threads and the allocator (``settings``)."""
