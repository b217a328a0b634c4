from nullviz.cli import console_main

console_main()
