//! ComfyUI interop: its two graph formats (the API prompt and the UI workflow JSON) read into
//! Veetance graphs, `/object_info` written from node schemas, and ComfyUI's error shapes.
