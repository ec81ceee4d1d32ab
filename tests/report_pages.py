"""Reading a report as a reader sees it: the text, tables and images of an HTML page, and of a
Markdown file rendered as a repository browser renders it (tests/test_report.py, test_pipeline.py)."""

from __future__ import annotations

from html.parser import HTMLParser

from markdown_it import MarkdownIt


class Page(HTMLParser):
    """What a reader sees of an HTML page: its text (whitespace collapsed), its tables' cells and
    its images' sources, in order."""

    HIDDEN = {"head", "title", "style"}

    def __init__(self, page: str):
        super().__init__()
        self.words: list[str] = []
        self.tables: list[list[list[str]]] = []
        self.images: list[str] = []
        self._hidden = 0
        self._cell: list[str] | None = None
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        self._hidden += tag in self.HIDDEN
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(dict(attrs)["src"])
        self.words.append(" ")  # a tag separates words in both renderings

    def handle_endtag(self, tag):
        self._hidden -= tag in self.HIDDEN
        if tag in ("td", "th"):
            self.tables[-1][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        self.words.append(" ")

    def handle_data(self, data):
        if not self._hidden:
            self.words.append(data)
            if self._cell is not None:
                self._cell.append(data)

    @property
    def text(self) -> str:
        return " ".join("".join(self.words).split())


def markdown_html(markdown: str) -> str:
    """The Markdown as a repository browser renders it (CommonMark with GitHub's tables)."""
    return MarkdownIt("commonmark").enable("table").render(markdown)


def assert_same_report(page_html: str, markdown: str) -> tuple[Page, Page]:
    """The HTML page and the Markdown, rendered, show the same text, tables and images."""
    page, readme = Page(page_html), Page(markdown_html(markdown))
    assert readme.tables == page.tables
    assert readme.images == page.images
    assert readme.text == page.text
    return page, readme
