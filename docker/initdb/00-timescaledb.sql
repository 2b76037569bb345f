-- Run once by the official TimescaleDB image on a fresh volume: the platform's migrations expect the
-- extension to be creatable (they also run CREATE EXTENSION IF NOT EXISTS themselves).
CREATE EXTENSION IF NOT EXISTS timescaledb;
CREATE EXTENSION IF NOT EXISTS btree_gist;
