//! Unit tests of the kubernetes reader.
