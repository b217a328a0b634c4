"""Long work in processes of their own (``python -m nullviz.jobs DIR``): the queue, its workers and their
progress files (``queue``), so a job outlives the page that started it and never slows the server."""
