//! `veetance serve`: ComfyUI's HTTP/WebSocket API over the Veetance engine.
