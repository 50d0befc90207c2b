"""Files as common tools write them ingest cleanly: BOMs, CRLF, UTF-16 from Windows editors,
Excel CSVs (';' separators, Windows-1252, capitalised headers), and other platforms' JSONL shapes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneforge.datasets.domain.ingest import IngestOptions, ingest_file
from tuneforge.datasets.domain.shards import iter_records

ROWS = [{"instruction": "Name a café in Paris", "input": "", "output": "Café de Flore, naïvely."},
        {"instruction": "Say hi", "input": "", "output": "Hi there!"}]


def _jsonl(rows: list[dict], newline: str = "\n") -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + newline for r in rows)


CASES = {
    # name: (file name, bytes)
    "utf8 bom jsonl (Notepad)": ("a.jsonl", b"\xef\xbb\xbf" + _jsonl(ROWS).encode()),
    "crlf jsonl (Windows)": ("a.jsonl", _jsonl(ROWS, "\r\n").encode()),
    "utf16-le bom jsonl (Notepad 'Unicode')": ("a.jsonl", _jsonl(ROWS, "\r\n").encode("utf-16")),
    "utf16-be bom jsonl": ("a.jsonl", b"\xfe\xff" + _jsonl(ROWS).encode("utf-16-be")),
    "utf16-le without bom (PowerShell)": ("a.jsonl", _jsonl(ROWS).encode("utf-16-le")),
    "utf8 bom json array": ("a.json", b"\xef\xbb\xbf" + json.dumps(ROWS, ensure_ascii=False).encode()),
    "excel csv utf-8 (bom, crlf)": ("a.csv", ("\ufeffinstruction,input,output\r\n" + "".join(
        f'"{r["instruction"]}",,"{r["output"]}"\r\n' for r in ROWS)).encode()),
    "excel csv semicolons, windows-1252": ("a.csv", ("Instruction;Input;Output\r\n" + "".join(
        f'{r["instruction"]};;"{r["output"]}"\r\n' for r in ROWS)).encode("cp1252")),
    "tab separated, capitalised headers": ("a.csv", ("Instruction\tInput\tOutput\n" + "".join(
        f'{r["instruction"]}\t\t{r["output"]}\n' for r in ROWS)).encode()),
    "utf16 csv (Excel 'Unicode text')": ("a.csv", ("instruction\tinput\toutput\r\n" + "".join(
        f'{r["instruction"]}\t\t{r["output"]}\r\n' for r in ROWS)).encode("utf-16")),
    "openai legacy prompt/completion": ("a.jsonl", _jsonl([{"prompt": r["instruction"], "completion": r["output"]}
                                                           for r in ROWS]).encode()),
    "question/answer": ("a.jsonl", _jsonl([{"question": r["instruction"], "answer": r["output"]}
                                           for r in ROWS]).encode()),
    "vertex input_text/output_text": ("a.jsonl", _jsonl([{"input_text": r["instruction"],
                                                          "output_text": r["output"]} for r in ROWS]).encode()),
    "gemini contents": ("a.jsonl", _jsonl([{"contents": [{"role": "user", "parts": [{"text": r["instruction"]}]},
                                                         {"role": "model", "parts": [{"text": r["output"]}]}]}
                                           for r in ROWS]).encode()),
    "cohere roles": ("a.jsonl", _jsonl([{"messages": [{"role": "User", "content": r["instruction"]},
                                                      {"role": "Chatbot", "content": r["output"]}]}
                                        for r in ROWS]).encode()),
}


@pytest.mark.parametrize("name", list(CASES))
def test_files_as_tools_write_them_ingest_cleanly(name: str, tmp_path: Path) -> None:
    file_name, data = CASES[name]
    path = tmp_path / file_name
    path.write_bytes(data)
    result = ingest_file(path, IngestOptions(file_name), tmp_path / "stage")
    assert (result.rows_read, result.rows_rejected) == (2, 0), name
    records = list(iter_records(result.shards.files))
    texts = [[m["content"] for m in r["messages"]] for r in records]
    assert texts == [[r["instruction"], r["output"]] for r in ROWS], name
