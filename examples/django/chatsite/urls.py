from django.urls import path

from chatsite import views

urlpatterns = [
    path("", views.index, name="index"),
    path("info", views.info, name="info"),
    path("form", views.form, name="form"),
    path("upload", views.upload, name="upload"),
    path("downloads", views.downloads, name="downloads"),
    path("download/<str:name>", views.download, name="download"),
    path("slow", views.slow, name="slow"),
    path("catalog", views.catalog, name="catalog"),
    path("catalog.json", views.catalog_json, name="catalog_json"),
    path("stream", views.stream, name="stream"),
    path("healthz", views.healthz, name="healthz"),
]
