from django.urls import re_path

from chatsite import consumers

websocket_urlpatterns = [
    re_path(r"^ws/chat/(?P<room>[\w-]{1,64})/$", consumers.ChatConsumer.as_asgi()),
]
