"""Sending request files to CaiaSoft: the client and the upload workers."""
