from runtime.agent import main

main()
