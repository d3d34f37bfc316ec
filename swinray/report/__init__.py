"""A sweep or any Aim experiment as a file to share: Markdown plus PNG plots."""
