"""Which BM25 library docstream's lexical index uses: tantivy against bm25s, measured on real text.

Corpus and queries are those of ``bench/retrieval_eval.py`` (the README texts of the installed packages,
cut at paragraph boundaries into documents; prose paragraphs held out as known-item queries). Documents
are indexed in chunks of ``--chunk-words`` words, as a run indexes its chunks; a query's document is the
one of its best chunk. For each library and tokenization the script reports:

* import: seconds to ``import`` the library (and its stemmer) in a fresh interpreter, median of 5 --
  a CLI query pays it every time, and must finish in under 1 s;
* build: seconds to index every chunk (tantivy on disk, one writer thread);
* query: median milliseconds of one query (the CLI's case, not a batch);
* recall@10 and MRR of the held-out paragraph's document.

tantivy's "default" tokenizer splits on non-alphanumerics, drops tokens over 40 bytes and lower-cases;
"en_stem" adds the English Snowball stemmer; "+stopwords" drops tantivy's English stop words (an
analyzer built from the same filters). bm25s splits on its token pattern and drops its English stop
words, optionally stemming with PyStemmer. A tantivy query is a boolean OR of the query's terms, each
weighted by how often it occurs in the query (as bm25s scores repeated query tokens), or once each.

    python bench/lexical_choice.py
"""
from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from readme_paragraphs import hold_out, installed_readmes, split_documents  # noqa: E402 (the same corpus as retrieval_eval)


def import_seconds(statement: str, repeats: int = 5) -> float:
    """Median wall time of ``statement`` in a fresh interpreter, less the interpreter's own start."""
    def run(code: str) -> float:
        probe = f"import time; t = time.perf_counter(); {code}; print(time.perf_counter() - t)"
        return float(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                    check=True).stdout)
    return statistics.median(run(statement) for _ in range(repeats))


def chunks_of(docs, words: int) -> tuple[list[str], list[str]]:
    """Chunk texts and their document ids (each document cut into runs of ``words`` words)."""
    texts, owners = [], []
    for doc in docs:
        tokens = "\n\n".join(doc.paragraphs).split()
        for start in range(0, len(tokens), words):
            texts.append(" ".join(tokens[start:start + words]))
            owners.append(doc.doc_id)
    return texts, owners


class Tantivy:
    def __init__(self, tokenizer: str, stopwords: bool, counted: bool, directory: Path):
        import tantivy
        self.tantivy, self.counted = tantivy, counted
        self.name = f"tantivy {tokenizer}{' +stopwords' if stopwords else ''}{'' if counted else ' unique terms'}"
        builder = tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple()).filter(tantivy.Filter.remove_long(40))
        builder = builder.filter(tantivy.Filter.lowercase())
        if stopwords:
            builder = builder.filter(tantivy.Filter.stopword("english"))
        if tokenizer == "en_stem":
            builder = builder.filter(tantivy.Filter.stemmer("english"))
        self.analyzer = builder.build()
        schema = tantivy.SchemaBuilder()
        schema.add_unsigned_field("row", stored=True, fast=True)
        schema.add_text_field("text", tokenizer_name="bench")
        self.schema = schema.build()
        directory.mkdir()
        self.index = tantivy.Index(self.schema, path=str(directory))
        self.index.register_tokenizer("bench", self.analyzer)

    def build(self, texts: list[str]) -> None:
        writer = self.index.writer(heap_size=64_000_000, num_threads=1)
        for row, text in enumerate(texts):
            doc = self.tantivy.Document()
            doc.add_unsigned("row", row)  # Document(row=...) would send an i64 to the u64 column
            doc.add_text("text", text)
            writer.add_document(doc)
        writer.commit()
        writer.wait_merging_threads()
        self.index.reload()
        self.searcher = self.index.searcher()

    def search(self, text: str, k: int) -> list[int]:
        Query, Occur = self.tantivy.Query, self.tantivy.Occur
        terms = Counter(self.analyzer.analyze(text))
        if not terms:
            return []
        # a term repeated in the query counts that many times (as in bm25s), or once ("unique terms")
        query = Query.boolean_query([(Occur.Should, Query.boost_query(Query.term_query(self.schema, "text", term),
                                                                      float(n if self.counted else 1)))
                                     for term, n in terms.items()])
        hits = self.searcher.search(query, k).hits
        return [self.searcher.doc(address)["row"][0] for _, address in hits]


class Bm25s:
    def __init__(self, stem: bool):
        import bm25s
        self.bm25s = bm25s
        self.name = f"bm25s {'english stemmer' if stem else 'no stemmer'} +stopwords"
        self.stemmer = None
        if stem:
            import Stemmer
            self.stemmer = Stemmer.Stemmer("english")

    def build(self, texts: list[str]) -> None:
        self.model = self.bm25s.BM25()
        self.model.index(self._tokens(texts), show_progress=False)

    def _tokens(self, texts: list[str]):
        return self.bm25s.tokenize(texts, stopwords="en", stemmer=self.stemmer, show_progress=False)

    def search(self, text: str, k: int) -> list[int]:
        tokens = self.bm25s.tokenize([text], stopwords="en", stemmer=self.stemmer, show_progress=False,
                                     return_ids=False)
        if not tokens[0]:
            return []
        rows, _ = self.model.retrieve(tokens, k=k, show_progress=False, n_threads=1)
        return [int(r) for r in rows[0]]


def evaluate(engine, texts, owners, queries, chunk_k: int) -> dict[str, float]:
    t = time.perf_counter()
    engine.build(texts)
    build = time.perf_counter() - t
    latencies, recall, mrr = [], 0.0, 0.0
    for query in queries:
        t = time.perf_counter()
        rows = engine.search(query.text, chunk_k)
        latencies.append(time.perf_counter() - t)
        ranking = list(dict.fromkeys(owners[r] for r in rows))  # a document at the rank of its best chunk
        if query.doc_id in ranking[:10]:
            recall += 1
            mrr += 1 / (ranking.index(query.doc_id) + 1)
    n = len(queries)
    return {"build_s": build, "query_ms": 1000 * statistics.median(latencies), "recall10": recall / n,
            "mrr": mrr / n}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--doc-chars", type=int, default=3000)
    p.add_argument("--max-parts", type=int, default=4)
    p.add_argument("--max-docs", type=int, default=400, help="documents at most (default 400)")
    p.add_argument("--chunk-words", type=int, default=150, help="words per indexed chunk (default 150)")
    p.add_argument("--queries-per-doc", type=int, default=2)
    p.add_argument("--min-query-chars", type=int, default=150)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    docs = split_documents(installed_readmes(args.doc_chars // 4), args.doc_chars, args.max_parts)[:args.max_docs]
    docs, queries = hold_out(docs, args.queries_per_doc, args.min_query_chars, random.Random(args.seed))
    texts, owners = chunks_of(docs, args.chunk_words)
    print(f"{len(docs)} documents from {len({d.source for d in docs})} installed packages' READMEs, "
          f"{len(texts)} chunks of <= {args.chunk_words} words, {len(queries)} held-out paragraphs as queries")
    imports = {"tantivy": import_seconds("import tantivy"),
               "bm25s": import_seconds("import bm25s, Stemmer")}
    print(f"python {sys.version.split()[0]}; import tantivy {imports['tantivy'] * 1000:.1f} ms, "
          f"import bm25s + Stemmer (numpy, scipy) {imports['bm25s'] * 1000:.1f} ms\n")
    print(f"| {'retriever':<40} | import s | build s | query ms | recall@10 |   MRR |")
    print(f"|{'-' * 42}|---------:|--------:|---------:|----------:|------:|")
    with tempfile.TemporaryDirectory() as work:
        engines = [Tantivy("default", False, True, Path(work, "a")), Tantivy("en_stem", False, True, Path(work, "b")),
                   Tantivy("default", True, True, Path(work, "c")), Tantivy("en_stem", True, False, Path(work, "d")),
                   Tantivy("en_stem", True, True, Path(work, "e")), Bm25s(stem=False), Bm25s(stem=True)]
        for engine in engines:
            r = evaluate(engine, texts, owners, queries, chunk_k=50)
            library = engine.name.split()[0]
            print(f"| {engine.name:<40} | {imports[library]:8.3f} | {r['build_s']:7.3f} | {r['query_ms']:8.2f} | "
                  f"{r['recall10']:9.3f} | {r['mrr']:.3f} |")


if __name__ == "__main__":
    main()
