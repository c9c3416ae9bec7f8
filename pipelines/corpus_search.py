"""Stream a corpus, index its chunks and answer queries: the run + index + search path of the CLI
written out with the Python API.

    python pipelines/corpus_search.py --model M.pth --tokenizer T --input corpus/ --out out/ "query" ...
"""
from __future__ import annotations

import argparse

from docstream.stream import build_config, run
from docstream.tasks import search, update_index


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--chunk-len", type=int, default=1024)
    ap.add_argument("-k", type=int, default=5)
    ap.add_argument("queries", nargs="+")
    args = ap.parse_args()
    config = build_config(None, dict(model=args.model, tokenizer=args.tokenizer, input=args.input,
                                     out=args.out, chunk_len=args.chunk_len))
    print("\n".join(run(config).lines(config.out)))
    print(f"indexed {update_index(config.out).added} new chunk vectors")
    for query in args.queries:
        print(f"\n{query!r}")
        for hit in search(config.out, query, k=args.k):
            print(f"  {hit.rank:>2} {hit.score:.3f} {hit.doc_id} chunk {hit.chunk_index}: {hit.snippet}")


if __name__ == "__main__":
    main()
