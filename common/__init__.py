"""Pieces shared by the broker, the stations and the vehicles: schemas, codecs, errors, geo."""
