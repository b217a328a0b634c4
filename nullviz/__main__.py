from .cli import main
from .deploy import keep_freed_memory

keep_freed_memory()  # a process of its own (a command, a job, a torchrun rank): reuse freed memory
raise SystemExit(main())
