//! The mesh node state machine.
