//! One connection: read heads under deadlines and limits, bodies, keep-alive, write replies.
