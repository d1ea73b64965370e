from dit4dit.datasets.tools import main

main()
