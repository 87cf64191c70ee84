"""Task images: fetched under the URL rules (``urls``: which hosts, schemes and redirects are allowed) by the
hardened ``fetcher``, and decoded within the pixel limits."""
