"""faceflow: bulk face enrollment and auditing against the Baidu Face API v2.

The library never imports Click and never prints; ``jobs/`` does that.
"""

__version__ = "0.1.0"
