//! Unit tests of the terraform reader (filled below).
