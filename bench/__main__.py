import sys

from bench.decode_bench import before_engine_bench as decode_before_engine_bench
from bench.engine_bench import main
from bench.redo_bench import before_engine_bench

if __name__ == "__main__":
    sys.exit(before_engine_bench() or decode_before_engine_bench() or main())
