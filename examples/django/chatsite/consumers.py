"""The chat consumer: every message goes to the room's group in Redis, so
clients connected to different daphne instances see each other."""

import json
import os

from channels.generic.websocket import AsyncWebsocketConsumer

INSTANCE = os.environ.get("INSTANCE", "daphne")

# Sending this text closes the connection with CLOSE_CODE (an application code
# in the 4000-4999 range), to show custom close codes pass through the proxy.
CLOSE_COMMAND = "/close"
CLOSE_CODE = 4000


class ChatConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        self.room = self.scope["url_route"]["kwargs"]["room"]
        self.group = f"chat_{self.room}"
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        headers = dict(self.scope["headers"])
        await self.send(text_data=json.dumps({
            "type": "hello",
            "instance": INSTANCE,
            "room": self.room,
            # daphne --proxy-headers: [left-most X-Forwarded-For, X-Forwarded-Port].
            "client": list(self.scope["client"] or []),
            "x_forwarded_proto": headers.get(b"x-forwarded-proto", b"").decode(),
            # The forwarded headers as they reached daphne.
            "forwarded_headers": {
                name: headers.get(name.encode(), b"").decode("latin-1")
                for name in ("x-forwarded-for", "x-forwarded-host", "x-forwarded-port",
                             "x-real-ip", "forwarded")
            },
        }))

    async def disconnect(self, code):
        await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None):
        if text_data is None:
            return
        try:
            message = json.loads(text_data).get("message", "")
        except (ValueError, AttributeError):
            message = text_data
        if message == CLOSE_COMMAND:
            await self.close(code=CLOSE_CODE)
            return
        await self.channel_layer.group_send(
            self.group, {"type": "chat.message", "message": message, "via": INSTANCE}
        )

    async def chat_message(self, event):
        await self.send(text_data=json.dumps({
            "type": "message",
            "message": event["message"],
            "via": event["via"],
            "instance": INSTANCE,
        }))
