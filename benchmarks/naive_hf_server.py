"""The naive peer: a minimal OpenAI-style FastAPI wrapper around transformers `model.generate`,
serving one request at a time (what many teams start with). Written only for comparisons.

Streams tokens with TextIteratorStreamer so TTFT and ITL are measurable by `inferd bench`.
Usage: python benchmarks/naive_hf_server.py --port 8100 [--dtype float32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
import uuid

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer

from inferd.model.registry import resolve_model_path


def build_app(dtype: torch.dtype) -> FastAPI:
    path = resolve_model_path("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype).eval()
    lock = asyncio.Lock()  # one request at a time
    app = FastAPI()

    @app.get("/health")
    async def health():
        return {"ok": True}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "smollm2-135m", "object": "model"}]}

    async def run(body: dict, ids: list[int], chat: bool):
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
        kwargs = dict(max_new_tokens=max_tokens, do_sample=False, pad_token_id=0)
        if body.get("ignore_eos"):
            kwargs["min_new_tokens"] = max_tokens
        streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        holder: dict = {}

        def work():
            with torch.no_grad():
                holder["out"] = model.generate(torch.tensor([ids]), streamer=streamer, **kwargs)

        async with lock:
            th = threading.Thread(target=work)
            th.start()
            loop = asyncio.get_running_loop()
            it = iter(streamer)
            while True:
                piece = await loop.run_in_executor(None, next, it, None)
                if piece is None:
                    break
                yield piece
            th.join()
        holder_out = holder["out"][0, len(ids):].tolist()
        yield {"completion_tokens": len(holder_out), "prompt_tokens": len(ids)}

    async def respond(body: dict, ids: list[int], chat: bool):
        rid, created = f"naive-{uuid.uuid4().hex}", int(time.time())
        obj = "chat.completion" if chat else "text_completion"
        if not body.get("stream"):
            text, usage = "", {}
            async for piece in run(body, ids, chat):
                if isinstance(piece, dict):
                    usage = piece
                else:
                    text += piece
            choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
                      if chat else {"index": 0, "text": text, "finish_reason": "length"})
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            return JSONResponse({"id": rid, "object": obj, "created": created, "model": "smollm2-135m",
                                 "choices": [choice], "usage": usage})

        async def sse():
            async for piece in run(body, ids, chat):
                if isinstance(piece, dict):
                    piece["total_tokens"] = piece["prompt_tokens"] + piece["completion_tokens"]
                    done = {"index": 0, "delta": {}, "finish_reason": "length"} if chat else \
                        {"index": 0, "text": "", "finish_reason": "length"}
                    yield f"data: {json.dumps({'id': rid, 'object': obj + '.chunk', 'choices': [done]})}\n\n"
                    yield f"data: {json.dumps({'id': rid, 'object': obj + '.chunk', 'choices': [], 'usage': piece})}\n\n"
                    continue
                if not piece:
                    continue
                choice = {"index": 0, "delta": {"content": piece}} if chat else {"index": 0, "text": piece}
                yield f"data: {json.dumps({'id': rid, 'object': obj + '.chunk', 'choices': [choice]})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream")

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        ids = tok.apply_chat_template(body["messages"], add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict):
            ids = ids["input_ids"]
        return await respond(body, list(ids), True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        prompt = body["prompt"]
        ids = prompt if isinstance(prompt, list) else tok.encode(prompt)
        return await respond(body, list(ids), False)

    return app


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8100)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    uvicorn.run(build_app(getattr(torch, args.dtype)), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
