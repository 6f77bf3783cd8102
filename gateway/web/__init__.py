"""The staff page: a read-only web page that answers "where is my item?" and "did everything go overnight?".

See docs/web.md. It reads the ledger and the folders the way `status` and `find` do and changes nothing.
"""
