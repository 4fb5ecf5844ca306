"""mkdocs hook: docstrings are written with Sphinx roles (``:func:`relax```); the rendered page
shows the name as code without the role prefix."""

import re

ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|obj|exc):(?=<code>)")


def on_page_content(html, **kwargs):
    return ROLE.sub("", html)
