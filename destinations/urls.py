from django.urls import path

from destinations import views

app_name = "destinations"

urlpatterns = [
    path("", views.destination_list, name="list"),
    path("new/", views.destination_create, name="create"),
    path("<int:pk>/", views.destination_detail, name="detail"),
    path("<int:pk>/edit/", views.destination_edit, name="edit"),
    path("<int:pk>/test/", views.destination_test, name="test"),
    path("<int:pk>/trust/", views.destination_trust, name="trust"),
    path("<int:pk>/delete/", views.destination_delete, name="delete"),
]
