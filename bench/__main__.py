import sys

from bench.engine_bench import main

if __name__ == "__main__":
    sys.exit(main())
